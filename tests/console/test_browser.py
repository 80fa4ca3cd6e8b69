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
from django.conf import settings

from tests.e2e.fleet import Fleet, _delete_queues, free_port, wait_for

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"

pytestmark = [pytest.mark.e2e]


def _seed_metrics(model: str, tenant: str, node: str) -> None:
    """Six hours of measurements in the time series (what the collector writes), so
    the charts have something to draw in the screenshots."""
    from datetime import timedelta

    from django.utils import timezone

    from appliance.gateway.stats import BUCKETS_MS
    from appliance.metrics.collect import roll_up, with_totals
    from appliance.metrics.models import GpuPoint, TrafficPoint

    now = timezone.now().replace(second=0, microsecond=0)
    traffic, gpus = [], []
    for i in range(360):
        start = now - timedelta(minutes=i)
        n = 600 + (i * 37) % 400
        buckets = [0] * (len(BUCKETS_MS) + 1)
        buckets[3], buckets[5], buckets[9] = int(n * 0.6), int(n * 0.35), n - int(n * 0.6) - int(n * 0.35)
        traffic.append(TrafficPoint(resolution="minute", start=start, tenant=tenant, model=model, requests=n,
                                    errors=i % 7, latency_ms_sum=n * 3.1, latency_buckets=buckets, queued=n,
                                    queue_ms_sum=n * 0.2, cache_hits=n // 4, cache_misses=n - n // 4))  # fmt: skip
        gpus.append(GpuPoint(resolution="minute", start=start, node=node, gpu_index=0, samples=30,
                             utilisation_sum=30 * (40 + i % 30), memory_used_mib_sum=30 * 30000,
                             memory_bandwidth_sum=30 * (20 + i % 15), memory_total_mib=81559))  # fmt: skip
    TrafficPoint.objects.bulk_create(with_totals(traffic))
    GpuPoint.objects.bulk_create(gpus)
    roll_up({(now - timedelta(hours=h)).replace(minute=0) for h in range(7)})


@pytest.fixture(scope="module")
def site(db_unblocked: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Committed data (a GPU node with tenant slices, a canary in progress, an operator,
    an auditor, a tenant admin, six hours of metrics) and gunicorn on a free port."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from appliance.accounts.models import AccountRole, ModelGrant
    from appliance.accounts.services import tenant_create
    from appliance.nodes.models import Gpu, MigDevice
    from appliance.rollouts import services
    from tests.factories import make_node, make_version

    call_command("collectstatic", "--noinput", verbosity=0, stdout=io.StringIO())
    tenant = tenant_create(slug="console-co", name="Console Co")
    other = tenant_create(slug="other-co", name="Other Co")
    node = make_node("console-gpu")
    gpu = Gpu.objects.create(node=node, index=0, uuid="GPU-console", product="NVIDIA H100 80GB HBM3",
                             model="H100-80GB", memory_mib=81559, mig_enabled=True)  # fmt: skip
    MigDevice.objects.create(gpu=gpu, uuid="MIG-c1", profile="3g.40gb", start=0, size=4, gpu_instance_id=1, tenant=tenant)
    MigDevice.objects.create(gpu=gpu, uuid="MIG-c2", profile="2g.20gb", start=4, size=2, gpu_instance_id=2)
    version = make_version("console-model")
    hidden = make_version("other-model")
    ModelGrant.objects.create(tenant=tenant, model=version.model)
    ModelGrant.objects.create(tenant=other, model=hidden.model)
    deployment = services.deployment_create(version=version, nodes=[node], strategy="canary")
    users = {"console-olivia": ("operator", None), "console-audrey": ("auditor", None), "console-tanya": ("tenant_admin", tenant)}
    for username, (role, scope) in users.items():
        user = get_user_model().objects.create_user(username, password=f"{username}-pw")
        AccountRole.objects.create(user=user, role=role, tenant=scope)
    _seed_metrics("console-model", "console-co", "console-gpu")
    fleet = Fleet.create(tmp_path_factory.mktemp("console"))
    address = f"127.0.0.1:{free_port()}"
    try:
        fleet.spawn("gunicorn", [sys.executable, "-m", "gunicorn", "appliance.wsgi", "--bind", address, "--workers", "2"])
        url = f"http://{address}"
        wait_for("gunicorn", lambda: urllib.request.urlopen(f"{url}/healthz", timeout=2).status == 200,
                 timeout=60, procs=fleet.procs)  # fmt: skip
        yield {"url": url, "deployment": deployment, "node": node.name, "fleet": fleet}
    finally:
        fleet.stop()
        _delete_queues([f"{settings.INSTANCE}.node.console-gpu"])
        # Leave no rollout behind for the fleets of later modules' workers to pick up.
        services.deployment_abort(deployment_id=deployment.pk, actor="test teardown")


@pytest.fixture(scope="module")
def live(site: dict[str, Any]) -> dict[str, Any]:
    """The rest of the appliance behind the same gunicorn: control worker, beat, a CPU
    node with a real Triton and a node with a simulated H100 (real Triton too)."""
    from appliance.nodes.models import Node

    fleet: Fleet = site["fleet"]
    fleet.start_worker()
    fleet.start_beat()
    fleet.start_agent("console-cpu")
    fleet.start_agent("console-sim", "--inventory", "simulated", "--simulate-gpus", "H100-80GB")
    wait_for("both console nodes healthy",
             lambda: Node.objects.filter(name__in=["console-cpu", "console-sim"], health="healthy").count() == 2,
             procs=fleet.procs)  # fmt: skip
    return site


@pytest.fixture
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def _watched_page(browser: Any, problems: list[str]) -> Any:
    """A page that records console errors, page errors, failed requests and HTTP errors."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # A poll in flight when the page navigates away is aborted by the browser itself
    # (net::ERR_ABORTED); that is not a failure of ours. Server errors arrive as responses.
    page.on("requestfailed", lambda r: None if r.failure == "net::ERR_ABORTED"
            else problems.append(f"failed request: {r.url} ({r.failure})"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.on("dialog", lambda d: d.accept())  # confirmations: the operator says yes
    return page


def _log_in(page: Any, url: str, username: str) -> None:
    page.goto(f"{url}/console/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-pw")
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/console/")


def test_every_page_renders_cleanly_in_chromium(browser: Any, site: dict[str, Any]) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    url = site["url"]
    problems: list[str] = []
    page = _watched_page(browser, problems)
    _log_in(page, url, "console-olivia")
    page.wait_for_selector("#rollouts table")  # htmx loaded the live rollouts panel
    assert "console-model" in page.inner_text("#rollouts")
    pages = {
        "overview": "/console/", "nodes": "/console/nodes/", "node": f"/console/nodes/{site['node']}/",
        "mig-editor": f"/console/nodes/{site['node']}/gpus/0/layout/",
        "models": "/console/models/", "model": "/console/models/console-model/",
        "deployments": "/console/deployments/", "deployment": f"/console/deployments/{site['deployment'].pk}/",
        "tenants": "/console/tenants/", "tenant": "/console/tenants/console-co/", "policies": "/console/policies/",
        "metrics": "/console/metrics/?model=console-model&window=6h", "metrics-week": "/console/metrics/?window=7d",
        "audit": "/console/audit/",
    }  # fmt: skip
    for name, path in pages.items():
        page.goto(f"{url}{path}")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        if name == "node":
            assert page.is_visible("text=3g.40gb · console-co"), "the MIG layout draws the tenant's slice"
        if name.startswith("metrics") or name == "overview":
            assert page.locator(".chart canvas").count() >= 1, "uPlot drew the charts"
    page.goto(f"{url}/console/nodes/{site['node']}/gpus/0/layout/")
    page.locator("select[name=profile]").nth(2).select_option("1g.10gb")
    page.wait_for_selector("text=3g.40gb@0, 2g.20gb@4, 1g.10gb@6")  # the planner's preview, live
    page.locator("select[name=profile]").nth(3).select_option("4g.40gb")
    page.wait_for_selector("text=Refused:")
    page.goto(f"{url}/console/policies/")
    page.fill("#rule-form input[name=name]", "deny-default-zone")
    page.fill("#rule-form input[name=zones]", "default")
    page.select_option("#rule-form select[name=effect]", "deny")
    page.click("text=Dry run")
    page.wait_for_selector("#impact h2")  # the dry run's answer, nothing saved
    page.goto(f"{url}/console/audit/")
    page.click("text=Verify the hash chain now")
    page.wait_for_selector("#chain-verdict")
    assert "audit trail intact" in page.inner_text("#chain-verdict")
    page.goto(f"{url}/console/deployments/{site['deployment'].pk}/")
    page.click("text=Pause")
    page.wait_for_selector("text=Resume")
    page.click("text=Resume")
    page.wait_for_selector("text=Pause")
    assert problems == [], problems


def test_operator_uploads_rolls_out_and_watches_it_reach_live(browser: Any, live: dict[str, Any],
                                                              tmp_path: Path) -> None:  # fmt: skip
    import json

    from triton_models.digits import build as digits_build

    digits_build.build(tmp_path)
    url = live["url"]
    problems: list[str] = []
    page = _watched_page(browser, problems)
    _log_in(page, url, "console-olivia")
    page.goto(f"{url}/console/models/")
    page.fill("#upload-form input[name=model]", "console-digits")
    page.set_input_files("#upload-form input[name=artifact]", str(tmp_path / "digits.tar.gz"))
    signature = json.loads((Path(digits_build.__file__).parent / "manifest.json").read_text())["signature"]
    page.fill("#upload-form textarea[name=signature]", json.dumps(signature))
    page.fill("#upload-form input[name=max_batch_size]", "64")
    page.click("#upload-form button[type=submit]")
    page.wait_for_url(f"{url}/console/models/console-digits/?version=1")
    assert "max_batch_size: 64" in page.inner_text("#config"), "the generated config.pbtxt is shown"
    page.click("text=Roll out…")
    page.check("input[name=target][value=nodes]")
    page.check("input[name=nodes][value=console-cpu]")
    page.click("text=Start rollout")
    page.wait_for_url(f"{url}/console/deployments/*/")
    # htmx refreshes the panel every second; text selectors need no script evaluation (CSP forbids eval).
    page.wait_for_selector("#deployment-state:text-matches('^(Live|Failed|Rolled back)')", timeout=120_000)
    assert page.inner_text("#deployment-state") == "Live", page.inner_text("#deployment")
    assert "100% of traffic to version 1" in page.inner_text("#deployment")
    page.screenshot(path=str(SCREENSHOTS / "rollout-live.png"), full_page=True)
    assert problems == [], problems


def test_operator_applies_a_mig_layout_and_watches_every_step(browser: Any, live: dict[str, Any]) -> None:
    url = live["url"]
    problems: list[str] = []
    page = _watched_page(browser, problems)
    _log_in(page, url, "console-olivia")
    page.goto(f"{url}/console/nodes/console-sim/")
    page.click("text=MIG layout (edit)")
    selects = page.locator("select[name=profile]")
    selects.nth(0).select_option("4g.40gb")
    selects.nth(1).select_option("3g.40gb")
    page.wait_for_selector("text=4g.40gb@0, 3g.40gb@4")
    page.click("text=Apply")  # confirmed by the dialog handler
    page.wait_for_url(f"{url}/console/reconfigurations/*/")
    page.wait_for_selector("#run-state:text-matches('^(Succeeded|Failed)')", timeout=120_000)
    assert page.inner_text("#run-state") == "Succeeded", page.inner_text("#run")
    assert page.get_attribute("progress", "value") == "100"
    steps = page.locator("#run tr td:nth-child(2)").all_inner_texts()
    assert steps == ["succeeded"] * 10, steps
    page.screenshot(path=str(SCREENSHOTS / "reconfiguration.png"), full_page=True)
    page.goto(f"{url}/console/nodes/console-sim/")
    assert page.is_visible("text=4g.40gb") and page.is_visible("text=3g.40gb")
    assert problems == [], problems


def test_auditor_has_no_buttons_and_the_server_refuses_them_too(browser: Any, site: dict[str, Any]) -> None:
    url = site["url"]
    problems: list[str] = []
    page = _watched_page(browser, problems)
    _log_in(page, url, "console-audrey")
    pk = site["deployment"].pk
    page.goto(f"{url}/console/deployments/{pk}/")
    assert page.locator("main button").count() == 0, "no action for an auditor"
    page.goto(f"{url}/console/nodes/{site['node']}/gpus/0/layout/")
    assert page.locator("text=Apply").count() == 0
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    refused = page.request.post(f"{url}/console/deployments/{pk}/pause/", headers={"X-CSRFToken": csrf})
    assert refused.status == 403
    assert problems == [], problems


def test_tenant_admin_sees_only_their_tenant(browser: Any, site: dict[str, Any]) -> None:
    url = site["url"]
    problems: list[str] = []
    page = _watched_page(browser, problems)
    _log_in(page, url, "console-tanya")
    assert page.locator("header >> text=Nodes").count() == 0 and page.locator("header >> text=Audit").count() == 0
    page.goto(f"{url}/console/tenants/")
    page.wait_for_url(f"{url}/console/tenants/console-co/")
    page.goto(f"{url}/console/deployments/")
    assert "console-model" in page.inner_text("main") and "other-model" not in page.inner_text("main")
    page.goto(f"{url}/console/models/")
    assert "other-model" not in page.inner_text("main")
    page.screenshot(path=str(SCREENSHOTS / "tenant-admin-models.png"), full_page=True)
    assert problems == [], problems
    for path in ("/console/tenants/other-co/", "/console/nodes/", "/console/models/other-model/"):
        response = page.goto(f"{url}{path}")
        assert response is not None and response.status in (403, 404), path


def test_a_new_key_is_shown_once_and_copied_to_the_clipboard(browser: Any, site: dict[str, Any]) -> None:
    url = site["url"]
    problems: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page = context.new_page()
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    _log_in(page, url, "console-tanya")  # a tenant admin manages their own tenant's keys
    page.goto(f"{url}/console/tenants/console-co/")
    page.fill("input[name=name]", "nightly-batch")
    page.check("input[name=models][value=console-model]")
    page.click("text=Create key")
    key = page.inner_text("#new-key")
    assert key.startswith("ak_") and f"Bearer {key}" in page.inner_text("#snippet")
    assert 'client.infer("console-model"' in page.inner_text("#snippet")
    page.click("button[data-copy='#new-key']")
    page.wait_for_selector("text=copied")
    assert page.evaluate("navigator.clipboard.readText()") == key
    page.screenshot(path=str(SCREENSHOTS / "key-created.png"), full_page=True)
    page.goto(f"{url}/console/tenants/console-co/")
    assert key not in page.content(), "shown once"
    assert "nightly-batch" in page.inner_text("main")
    assert problems == [], problems
    context.close()
