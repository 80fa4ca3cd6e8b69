"""The rollout state machine and its gates on PostgreSQL and Redis, without any worker:
progress.advance is called the way the beat tick calls it."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from appliance.catalog.models import Model
from appliance.gateway.stats import Recorder, last_request, window
from appliance.rollouts import progress, services
from appliance.rollouts.choices import DeploymentState, ReplicaState, Strategy
from appliance.rollouts.models import Deployment, Replica
from appliance.rollouts.selectors import traffic_split
from tests.conftest import assert_audited
from tests.factories import make_node, make_version

pytestmark = pytest.mark.django_db


def _deploy(version: Any, nodes: list[Any], capture: Any, **options: Any) -> Deployment:
    with capture(execute=False) as callbacks:
        deployment = services.deployment_create(version=version, nodes=nodes, **options)
    assert len(callbacks) == 1, "the rollout task is enqueued once, after commit"
    return deployment


def _all_live(deployment: Deployment) -> None:
    services.deployment_claim(deployment_id=str(deployment.pk))
    for replica in deployment.replicas.all():
        assert services.replica_mark_live(replica=services.replica_claim(replica_id=str(replica.pk)))


def _traffic(model: str, version: int, *, ok: int, errors: int = 0, ms: float = 2.0, at: float | None = None) -> None:
    """What the gateway would have recorded for these requests."""
    recorder = Recorder()
    for _ in range(ok):
        recorder.record(model, str(version), True, ms / 1000)
    for _ in range(errors):
        recorder.record(model, str(version), False, ms / 1000)

    async def flush() -> None:
        await recorder.flush(at=at)
        await recorder.close()

    asyncio.run(flush())


def _decoding(model: str, version: int, *, streams: int, tokens_per_s: float) -> None:
    """What the gateway records of generative streams of 64 tokens decoded at this speed."""
    recorder = Recorder()
    for _ in range(streams):
        recorder.decoded(model, str(version), 63, 63 / tokens_per_s)

    async def flush() -> None:
        await recorder.flush()
        await recorder.close()

    asyncio.run(flush())


def _age_step(deployment: Deployment, seconds: float) -> None:
    """The current step began `seconds` ago (a queryset update: no audit noise in tests)."""
    Deployment.objects.filter(pk=deployment.pk).update(step_started=timezone.now() - timedelta(seconds=seconds))


def _serving(model: str, capture: Any, nodes: list[Any]) -> Deployment:
    first = _deploy(make_version(model), nodes, capture)
    _all_live(first)
    assert progress.advance(first.pk) == "promoted", "a model's first deployment has nothing to be gated against"
    return first


def _model() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


def test_versions_are_numbered_per_model() -> None:
    assert [make_version("a").number, make_version("a").number, make_version("b").number] == [1, 2, 1]


def test_a_second_rollout_of_the_same_model_is_refused_while_one_runs(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    _deploy(make_version(), [node], django_capture_on_commit_callbacks)
    with pytest.raises(services.RolloutBusy, match="already in progress"):
        services.deployment_create(version=make_version(), nodes=[node])


def test_claims_are_idempotent(django_capture_on_commit_callbacks: Any) -> None:
    deployment = _deploy(make_version(), [make_node()], django_capture_on_commit_callbacks)
    assert services.deployment_claim(deployment_id=str(deployment.pk)).state == DeploymentState.ROLLING_OUT
    assert services.deployment_claim(deployment_id=str(deployment.pk)).state == DeploymentState.ROLLING_OUT
    replica = deployment.replicas.get()
    first = services.replica_claim(replica_id=str(replica.pk))
    again = services.replica_claim(replica_id=str(replica.pk))  # a re-delivery after a crash
    assert (first.state, first.attempts, again.attempts) == (ReplicaState.LOADING, 1, 2)
    assert services.replica_mark_live(replica=again)
    assert services.replica_claim(replica_id=str(replica.pk)) is None, "a live replica is not loaded again"


def test_all_at_once_promotes_when_loaded_and_retires_the_old(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    model = _model()
    old = _serving(model, django_capture_on_commit_callbacks, [node])
    new = _deploy(make_version(model), [node], django_capture_on_commit_callbacks)
    assert new.previous_id == old.pk
    _all_live(new)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert progress.advance(new.pk) == "promoted"
    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.state, new.state, new.traffic_percent) == (DeploymentState.SUPERSEDED, DeploymentState.LIVE, 100)
    assert old.replicas.get().state == ReplicaState.RETIRED
    assert len(callbacks) == 1, "the node is told to unload the old version (after the grace period)"
    assert_audited("deployment.update", target_id=old.pk)


def test_canary_walks_its_steps_while_the_gate_passes(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    model = _model()
    old = _serving(model, django_capture_on_commit_callbacks, [node])
    new = _deploy(make_version(model), [node], django_capture_on_commit_callbacks, strategy=Strategy.CANARY,
                  steps=[10, 50], step_seconds=5)  # fmt: skip
    assert new.steps == [10, 50, 100], "a canary always ends at 100%"
    _all_live(new)
    assert progress.advance(new.pk) == "traffic started"
    assert traffic_split()[0][model] == {"1": 90, "2": 10}
    _age_step(new, 1)
    _traffic(model, 1, ok=200)
    _traffic(model, 2, ok=30)
    assert progress.advance(new.pk) == "wait", "the step is held for step_seconds even when healthy"
    for expected in ("step 1", "step 2", "promoted"):
        _age_step(new, 6)
        _traffic(model, 1, ok=200)
        _traffic(model, 2, ok=30)
        assert progress.advance(new.pk) == expected
    new.refresh_from_db()
    assert [entry["percent"] for entry in new.gate_log] == [10, 50, 100]
    assert new.gate_log[0]["new"]["requests"] >= 30
    old.refresh_from_db()
    assert (new.state, old.state) == (DeploymentState.LIVE, DeploymentState.SUPERSEDED)
    assert traffic_split()[0][model] == {"2": 100}


def test_canary_with_errors_rolls_back_naming_the_gate_and_numbers(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    model = _model()
    old = _serving(model, django_capture_on_commit_callbacks, [node])
    new = _deploy(make_version(model), [node], django_capture_on_commit_callbacks, strategy=Strategy.CANARY, step_seconds=60)
    _all_live(new)
    progress.advance(new.pk)
    _age_step(new, 1)
    _traffic(model, 1, ok=300)
    _traffic(model, 2, ok=20, errors=10)
    assert progress.advance(new.pk) == "rolled back", "a breach does not wait for the end of the step"
    new.refresh_from_db()
    old.refresh_from_db()
    assert (new.state, new.traffic_percent, old.state) == (DeploymentState.FAILED, 0, DeploymentState.LIVE)
    assert "success-rate gate failed at 10%" in new.error and "10 errors in 30" in new.error
    assert new.gate_log[-1]["failed_gate"] == "success_rate"
    assert new.replicas.get().state == ReplicaState.RETIRED
    assert old.replicas.get().state == ReplicaState.LIVE
    assert traffic_split()[0][model] == {"1": 100}


def test_slow_version_fails_the_latency_gate(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    model = _model()
    _serving(model, django_capture_on_commit_callbacks, [node])
    new = _deploy(make_version(model), [node], django_capture_on_commit_callbacks, strategy=Strategy.CANARY, step_seconds=60)
    _all_live(new)
    progress.advance(new.pk)
    _age_step(new, 1)
    _traffic(model, 1, ok=300, ms=2.0)
    _traffic(model, 2, ok=30, ms=60.0)
    assert progress.advance(new.pk) == "rolled back"
    new.refresh_from_db()
    assert new.gate_log[-1]["failed_gate"] == "latency"
    assert "p95 75.0 ms vs old 2.0 ms" in new.error


def test_a_generative_version_that_decodes_slower_fails_the_tokens_per_s_gate(
        django_capture_on_commit_callbacks: Any) -> None:  # fmt: skip
    node = make_node()
    model = _model()
    _serving(model, django_capture_on_commit_callbacks, [node])
    new = _deploy(make_version(model), [node], django_capture_on_commit_callbacks, strategy=Strategy.CANARY,
                  steps=[10, 50], step_seconds=5)  # fmt: skip
    _all_live(new)
    progress.advance(new.pk)

    def step(new_tokens_per_s: float) -> str:
        """A step's streams, as fast to the first token on both versions (the latency gate passes)."""
        _age_step(new, 6)
        _traffic(model, 1, ok=200, ms=60.0)
        _traffic(model, 2, ok=30, ms=60.0)
        _decoding(model, 1, streams=200, tokens_per_s=30.0)
        _decoding(model, 2, streams=30, tokens_per_s=new_tokens_per_s)
        return progress.advance(new.pk)

    assert step(27.0) == "step 1", "nearly as fast to decode: the step passes"
    new.refresh_from_db()
    assert (new.gate_log[-1]["new"]["tokens_per_s"], new.gate_log[-1]["old"]["tokens_per_s"]) == (27.0, 30.0)
    # At the next step it decodes at a third of the old speed: rolled back, saying so in numbers.
    assert step(10.0) == "rolled back"
    new.refresh_from_db()
    assert new.gate_log[-1]["failed_gate"] == "tokens_per_s"
    # (the window may hold the previous step's streams too: the new version's speed is 10 or a mix with 27)
    found = re.search(r"new version decodes ([\d.]+) tokens/s vs old 30\.0 \(floor 20\.1\)", new.error)
    assert found is not None and 10.0 <= float(found.group(1)) < 20.1, new.error


def test_blue_green_switches_at_once_and_judges_against_the_window_before(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    model = _model()
    _serving(model, django_capture_on_commit_callbacks, [node])
    new = _deploy(make_version(model), [node], django_capture_on_commit_callbacks, strategy=Strategy.BLUE_GREEN,
                  step_seconds=10)  # fmt: skip
    _all_live(new)
    progress.advance(new.pk)
    new.refresh_from_db()
    assert (new.state, new.traffic_percent) == (DeploymentState.PROGRESSING, 100)
    assert traffic_split()[0][model] == {"1": 0, "2": 100}
    _age_step(new, 11)
    started = Deployment.objects.get(pk=new.pk).step_started.timestamp()
    _traffic(model, 1, ok=100, ms=2.0, at=started - 5)  # before the switch
    _traffic(model, 2, ok=100, errors=20)
    assert progress.advance(new.pk) == "rolled back"
    assert "vs old 100.0%" in Deployment.objects.get(pk=new.pk).error


def test_a_step_without_enough_traffic_waits_and_says_why(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    model = _model()
    _serving(model, django_capture_on_commit_callbacks, [node])
    new = _deploy(make_version(model), [node], django_capture_on_commit_callbacks, strategy=Strategy.CANARY, step_seconds=1)
    _all_live(new)
    progress.advance(new.pk)
    _age_step(new, 5)
    _traffic(model, 2, ok=3)
    assert progress.advance(new.pk) == "wait"
    verdict, record = progress.judge(Deployment.objects.get(pk=new.pk), time.time())
    assert verdict == "wait" and record["waiting"].startswith("3 of 20 requests")


def test_pause_holds_the_split_resume_continues_abort_restores(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    model = _model()
    old = _serving(model, django_capture_on_commit_callbacks, [node])
    new = _deploy(make_version(model), [node], django_capture_on_commit_callbacks, strategy=Strategy.CANARY, step_seconds=1)
    _all_live(new)
    progress.advance(new.pk)
    services.deployment_pause(deployment_id=new.pk)
    _age_step(new, 5)
    _traffic(model, 1, ok=100)
    _traffic(model, 2, ok=50)
    assert progress.advance(new.pk) == "idle", "a paused rollout is not judged"
    with django_capture_on_commit_callbacks(execute=False):
        services.deployment_resume(deployment_id=new.pk)
    assert progress.advance(new.pk) == "wait", "resuming restarts the step's window"
    with pytest.raises(services.RolloutStateError):
        services.deployment_resume(deployment_id=new.pk)
    services.deployment_abort(deployment_id=new.pk, actor="user:erin")
    new.refresh_from_db()
    assert (new.state, new.error, new.traffic_percent) == (DeploymentState.ROLLED_BACK, "aborted by user:erin", 0)
    assert Deployment.objects.get(pk=old.pk).state == DeploymentState.LIVE
    with pytest.raises(services.RolloutStateError, match="no rollout to roll back"):
        services.deployment_abort(deployment_id=new.pk, actor="user:erin")


def test_rollback_after_promotion_rolls_the_previous_version_out_again(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    model = _model()
    old = _serving(model, django_capture_on_commit_callbacks, [node])
    new = _deploy(make_version(model), [node], django_capture_on_commit_callbacks)
    _all_live(new)
    progress.advance(new.pk)
    with django_capture_on_commit_callbacks(execute=False):
        again = services.deployment_rollback(deployment_id=new.pk, actor="user:erin")
    assert (again.version_id, again.previous_id, again.strategy) == (old.version_id, new.pk, Strategy.ALL_AT_ONCE)
    assert [r.node_id for r in again.replicas.all()] == [node.pk], "the same placement as the serving deployment"


def test_a_replica_that_fails_to_load_rolls_the_rollout_back(django_capture_on_commit_callbacks: Any) -> None:
    a, b = make_node("node-a"), make_node("node-b")
    model = _model()
    old = _serving(model, django_capture_on_commit_callbacks, [a, b])
    new = _deploy(make_version(model), [a, b], django_capture_on_commit_callbacks)
    services.deployment_claim(deployment_id=str(new.pk))
    ra, rb = Replica.objects.filter(deployment=new).order_by("node__name")
    services.replica_mark_live(replica=services.replica_claim(replica_id=str(ra.pk)))
    services.replica_claim(replica_id=str(rb.pk))
    assert progress.advance(new.pk) == "loading"
    services.replica_mark_failed(replica=rb, error="Triton refused to load digits: boom")
    assert progress.advance(new.pk) == "rolled back"
    new.refresh_from_db()
    assert new.state == DeploymentState.FAILED
    assert "node-b: Triton refused to load digits: boom" in new.error
    assert Replica.objects.get(pk=ra.pk).state == ReplicaState.RETIRED, "the replica that did load is unloaded too"
    assert Deployment.objects.get(pk=old.pk).state == DeploymentState.LIVE


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strategy": "canary", "steps": [50, 10]}, "must increase"),
        ({"strategy": "blue_green", "steps": [10, 100]}, "canary rollouts only"),
        ({"strategy": "canary", "gate": {"p99": 3}}, "unknown gate setting"),
        ({"strategy": "canary", "gate": {"max_latency_ratio": 0.5}}, "below 1"),
        ({"strategy": "canary", "gate": {"min_tokens_per_s_ratio": 1.5}}, "above 1"),
        ({"strategy": "sideways"}, "is not one of"),
        ({"replicas": 3}, "3 replicas asked"),
    ],
)
def test_rollout_requests_are_validated(options: dict[str, Any], message: str) -> None:
    version = make_version(_model())
    nodes = [] if "replicas" in options else [make_node()]
    with pytest.raises(services.RolloutError, match=message):
        services.deployment_create(version=version, nodes=nodes, **options)
    assert not Deployment.objects.exists()


def test_a_profile_that_does_not_fit_the_version_is_refused_before_any_node_sees_it() -> None:
    version = make_version(_model())
    Model.objects.filter(pk=version.model_id).update(serving_profile={"max_batch_size": 1000})
    version.refresh_from_db()
    with pytest.raises(services.RolloutError, match="max_batch_size 1000 exceeds what version 1 supports"):
        services.deployment_create(version=version, nodes=[make_node()])


def test_idle_model_scales_to_zero_and_a_request_wakes_it(django_capture_on_commit_callbacks: Any) -> None:
    node = make_node()
    model = _model()
    deployment = _serving(model, django_capture_on_commit_callbacks, [node])
    Model.objects.filter(name=model).update(idle_unload_s=60)
    _traffic(model, 1, ok=1, at=time.time() - 120)
    Replica.objects.filter(deployment=deployment).update(updated=timezone.now() - timedelta(seconds=120))
    assert last_request(model) is not None
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert progress.park_idle() == [model]
    assert len(callbacks) == 1, "the node unloads it"
    assert deployment.replicas.get().state == ReplicaState.PARKED
    assert model in traffic_split()[1]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert services.model_wake(model_name=model) == 1
        assert services.model_wake(model_name=model) == 0, "a second request does not load it twice"
    assert len(callbacks) == 1
    assert deployment.replicas.get().state == ReplicaState.PENDING
    assert model in traffic_split()[1], "still waking: requests wait rather than fail"


def test_a_recently_used_model_stays_resident(django_capture_on_commit_callbacks: Any) -> None:
    model = _model()
    _serving(model, django_capture_on_commit_callbacks, [make_node()])
    Model.objects.filter(name=model).update(idle_unload_s=60)
    _traffic(model, 1, ok=1)
    assert progress.park_idle() == []


def test_window_statistics_sum_across_seconds_and_processes() -> None:
    model = _model()
    now = time.time()
    _traffic(model, 1, ok=10, ms=1.5, at=now - 2)
    _traffic(model, 1, ok=89, errors=1, ms=4.0, at=now - 1)
    stats = window(model, "1", now - 3, now)
    assert (stats.requests, stats.errors) == (100, 1)
    assert (stats.p50_ms, stats.p99_ms) == (5.0, 5.0)
    assert stats.mean_ms == pytest.approx((10 * 1.5 + 90 * 4.0) / 100)
    assert window(model, "1", now - 1, now).requests == 90, "whole seconds: the older one is outside"


def test_a_tensorrt_plan_is_placed_only_where_it_was_built_for() -> None:
    from appliance.nodes.models import Gpu, Node

    version = make_version(_model(), fmt="tensorrt_plan", gpu_arch="9.0", tensorrt_version="10.5.0",
                           artifact=b"serialized-engine")  # fmt: skip
    Model.objects.filter(pk=version.model_id).update(serving_profile={"warmup": {"source": "none"}})
    version.refresh_from_db()
    cpu = make_node("cpu-node")
    with pytest.raises(services.RolloutError, match="built for compute capability 9.0; the node has no GPU"):
        services.deployment_create(version=version, nodes=[cpu])
    a100 = make_node("a100-node")
    Gpu.objects.create(node=a100, index=0, uuid="GPU-a", product="NVIDIA A100-SXM4-40GB", model="A100-40GB", memory_mib=40960)
    with pytest.raises(services.RolloutError, match="the node has 8.0"):
        services.deployment_create(version=version, nodes=[a100])
    h100 = make_node("h100-node")
    Gpu.objects.create(node=h100, index=0, uuid="GPU-h", product="NVIDIA H100 80GB HBM3", model="H100-80GB", memory_mib=81559)
    Node.objects.filter(pk=h100.pk).update(tensorrt_version="10.3.0")
    with pytest.raises(services.RolloutError, match="built with TensorRT 10.5.0; the node runs 10.3.0"):
        services.deployment_create(version=version, nodes=[Node.objects.get(pk=h100.pk)])
    assert not Deployment.objects.exists()
