"""The console in a real browser: Debian's Chromium, headless, driven by Playwright
(no browser download), against gunicorn serving the appliance as in production
(static files collected, served by WhiteNoise, under the Content-Security-Policy).
Every page renders with no console error and no failed request; screenshots of
the main pages are kept in var/screenshots/ as test artifacts."""

from __future__ import annotations

import io
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fleet import Fleet, free_port, wait_for

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def site(db_unblocked: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Committed data (a GPU node with tenant slices, a canary in progress, an operator)
    and gunicorn on a free port."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from appliance.accounts.models import AccountRole
    from appliance.accounts.services import tenant_create
    from appliance.nodes.models import Gpu, MigDevice
    from appliance.rollouts import services
    from tests.factories import make_node, make_version

    call_command("collectstatic", "--noinput", verbosity=0, stdout=io.StringIO())
    tenant = tenant_create(slug="console-co", name="Console Co")
    node = make_node("console-gpu")
    gpu = Gpu.objects.create(node=node, index=0, uuid="GPU-console", product="NVIDIA H100 80GB HBM3",
                             model="H100-80GB", memory_mib=81559, mig_enabled=True)  # fmt: skip
    MigDevice.objects.create(gpu=gpu, uuid="MIG-c1", profile="3g.40gb", start=0, size=4, gpu_instance_id=1, tenant=tenant)
    MigDevice.objects.create(gpu=gpu, uuid="MIG-c2", profile="2g.20gb", start=4, size=2, gpu_instance_id=2)
    deployment = services.deployment_create(version=make_version("console-model"), nodes=[node], strategy="canary")
    user = get_user_model().objects.create_user("console-olivia", password="console-olivia-pw")
    AccountRole.objects.create(user=user, role="operator")
    fleet = Fleet.create(tmp_path_factory.mktemp("console"))
    address = f"127.0.0.1:{free_port()}"
    try:
        fleet.spawn("gunicorn", [sys.executable, "-m", "gunicorn", "appliance.wsgi", "--bind", address, "--workers", "2"])
        url = f"http://{address}"
        wait_for("gunicorn", lambda: urllib.request.urlopen(f"{url}/healthz", timeout=2).status == 200,
                 timeout=60, procs=fleet.procs)  # fmt: skip
        yield {"url": url, "deployment": deployment, "node": node.name}
    finally:
        fleet.stop()
        # Leave no rollout behind for the fleets of later modules' workers to pick up.
        services.deployment_abort(deployment_id=deployment.pk, actor="test teardown")


@pytest.fixture
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_every_page_renders_cleanly_in_chromium(browser: Any, site: dict[str, Any]) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    url = site["url"]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)

    page.goto(f"{url}/console/")
    page.fill("#id_username", "console-olivia")
    page.fill("#id_password", "console-olivia-pw")
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/console/")
    page.wait_for_selector("#rollouts table")  # htmx loaded the live rollouts panel
    assert "console-model" in page.inner_text("#rollouts")
    pages = {
        "overview": "/console/", "nodes": "/console/nodes/", "node": f"/console/nodes/{site['node']}/",
        "deployments": "/console/deployments/", "deployment": f"/console/deployments/{site['deployment'].pk}/",
        "audit": "/console/audit/",
    }  # fmt: skip
    for name, path in pages.items():
        page.goto(f"{url}{path}")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        if name == "node":
            assert page.is_visible("text=3g.40gb · console-co"), "the MIG layout draws the tenant's slice"
    page.goto(f"{url}/console/deployments/{site['deployment'].pk}/")
    page.click("text=Pause")
    page.wait_for_selector("text=Resume")
    assert problems == [], problems
