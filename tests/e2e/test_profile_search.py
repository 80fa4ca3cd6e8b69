"""A serving-profile search end to end, on real parts: the digits classifier uploaded as an
ONNX version, a search asked for over the REST API and run by the optimiser's Celery worker
(a private tritonserver of its own, the appliance's ONNX Runtime runner in the Python
backend, the stock asyncio gRPC client), its results read back and its recommendation
applied as the model's serving profile (audited). The search leaves no Triton and no
scratch directory behind, neither when it succeeds nor when its measuring fails.

The grid is small (no batching and batches of up to 16, one instance) and the objective
generous: this checks the mechanics on a shared 2-core machine; bench/profile_search.py
measures MiniLM under a real objective.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from appliance.audit.models import AuditEvent
from appliance.catalog.models import Model, ModelVersion
from appliance.core.process import living_processes
from appliance.optimisation import profiles
from tests.e2e.fleet import Fleet, wait_for
from tests.e2e.operator import Operator
from tests.factories import manifest
from triton_models.digits import build as digits_build
from triton_models.digits import onnx as digits_onnx

pytestmark = [pytest.mark.e2e]

MODEL = "digits-search"
GRID = {"max_batch_size": [1, 16], "instance_count": [1], "max_queue_delay_us": [0]}


@pytest.fixture(scope="module")
def fleet(db_unblocked: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # No node agent: the search measures on the optimiser's own Triton; the node only names the hardware.
    with Fleet.running(tmp_path_factory.mktemp("profile-search"), {}) as fleet:
        fleet.start_optimiser()
        yield fleet


def _search_processes(search_id: str) -> list[int]:
    """The search's tritonserver and its backend stubs (its shared-memory prefix names the search)."""
    return [p.pid for p in living_processes() if f"appliance-search-{search_id}".encode() in p.cmdline()]


def test_a_search_on_the_optimisers_worker_recommends_a_profile_that_one_action_applies(fleet: Fleet) -> None:
    olga = Operator("olga-profiles")
    olga.post("models/", {"name": MODEL})
    spec = manifest("digits")
    version = olga.post("versions/", {
        "model": MODEL, "format": "onnx", "signature": json.dumps(spec["signature"]), "max_batch_size": 64,
        "artifact": SimpleUploadedFile("model.onnx", digits_onnx.graph(digits_build.train()[0])),
    }, fmt="multipart")  # fmt: skip
    olga.post("nodes/", {"name": "cpu-search"})
    search = olga.post("profile-searches/", {"version": version["id"], "node": "cpu-search", "objective_p99_ms": 2000,
                                             "concurrency": 16, "requests": 400, "grid": GRID})  # fmt: skip
    assert search["state"] == "pending"

    done = wait_for("the profile search", lambda: (s := olga.get(f"profile-searches/{search['id']}/"))["state"]
                    in ("succeeded", "failed") and s, timeout=120, procs=fleet.procs)  # fmt: skip
    assert done["state"] == "succeeded", done["error"]
    results = done["results"]
    assert [(r["max_batch_size"], r["instance_count"]) for r in results] == [(1, 1), (16, 1)]
    for r in results:
        assert r["errors"] == 0 and r["throughput"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"], r
        assert r["met_objective"] == (r["p99_ms"] <= 2000) and r["client_cpu_us"] > 0
    met = [r for r in results if r["met_objective"]]
    best = max(met, key=lambda r: r["throughput"])
    assert done["recommended"] == best["id"]
    assert done["speed_up"] == pytest.approx(best["throughput"] / results[0]["throughput"])
    assert "the most throughput of the profiles that met p99 ≤ 2000 ms at concurrency 16" in done["recommendation"]
    assert done["measured_on"] and any("starting a private Triton" in p["message"] for p in done["progress"])
    assert not _search_processes(search["id"]), "the search's Triton outlived it"
    assert not (settings.VAR_DIR / "profile-searches" / search["id"]).exists()

    model_events = AuditEvent.objects.filter(action="model.update", target_id=str(Model.objects.get(name=MODEL).pk))
    before = model_events.count()
    applied = olga.post(f"profile-searches/{search['id']}/apply/", {})
    assert applied["applied"] and applied["applied_by"] == "olga-profiles"
    profile = olga.get(f"models/{MODEL}/")["serving_profile"]
    assert profile == best["profile"] and profile["max_batch_size"] == best["max_batch_size"]
    assert model_events.count() == before + 1
    event = model_events.order_by("-time").first()
    assert event is not None and event.actor == "user:olga-profiles" and "serving_profile" in json.dumps(event.changes)
    config = olga.client.get(f"/api/v1/versions/{version['id']}/config/").content.decode()
    assert f"max_batch_size: {best['max_batch_size']}\n" in config, config


def test_the_search_triton_and_scratch_directory_go_when_measuring_fails(fleet: Fleet) -> None:
    """The bench that the task runs, entered and failed in this process: what it started goes."""
    version = ModelVersion.objects.filter(model__name=MODEL).select_related("model").first()
    assert version is not None, "runs after the search above uploaded the version"
    workdir = settings.VAR_DIR / "profile-searches" / "failing-bench"
    seen: dict[str, Any] = {}
    with pytest.raises(RuntimeError, match="measuring failed"):
        with profiles.Bench(version=version, workdir=workdir) as bench:
            seen["pids"] = _search_processes("failing-bench")
            assert bench.tree is not None and bench.tree.alive() and (workdir / "models" / MODEL / "1").is_dir()
            raise RuntimeError("measuring failed")
    assert seen["pids"], "the bench ran a Triton"
    assert not _search_processes("failing-bench") and not workdir.exists()


def test_a_running_search_cancelled_stops_at_its_next_profile_and_leaves_nothing(fleet: Fleet) -> None:
    """Cancel over the REST API while the worker measures: it stops before the next profile,
    stays cancelled (not failed, never succeeded), records no recommendation, and its Triton
    and scratch directory go as on any other end."""
    olga = Operator("olga-cancels")
    version = ModelVersion.objects.filter(model__name=MODEL).first()
    assert version is not None, "runs after the search above uploaded the version"
    grid = {"max_batch_size": [1, 4, 16], "instance_count": [1, 2], "max_queue_delay_us": [0]}
    search = olga.post("profile-searches/", {"version": str(version.pk), "node": "cpu-search", "objective_p99_ms": 2000,
                                             "concurrency": 16, "requests": 2000, "grid": grid})  # fmt: skip
    wait_for("the search to measure its first profile", lambda: any(
        p["message"].startswith("1/") for p in olga.get(f"profile-searches/{search['id']}/")["progress"]),
        timeout=120, procs=fleet.procs)  # fmt: skip
    assert _search_processes(search["id"]), "the search runs its Triton"
    cancelled = olga.post(f"profile-searches/{search['id']}/cancel/", {})
    assert cancelled["state"] == "cancelled" and cancelled["cancelled_by"] == "olga-cancels"

    wait_for("the search's Triton to go", lambda: not _search_processes(search["id"])
             and not (settings.VAR_DIR / "profile-searches" / search["id"]).exists(), timeout=120, procs=fleet.procs)  # fmt: skip
    done = olga.get(f"profile-searches/{search['id']}/")
    assert done["state"] == "cancelled" and done["recommended"] is None and done["recommendation"] == ""
    assert len(done["results"]) < 6, "it stopped before measuring every profile"
    assert not any(p["message"].startswith("6/") for p in done["progress"])
