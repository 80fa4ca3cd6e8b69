"""The spine, end to end and real at every joint.

An operator registers and rolls out the digits model through the REST API; a
Celery worker and two node agents (each supervising its own tritonserver) do the
rollout; internal teams call the gateway with the stock tritonclient.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import queue
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from django.core.management import call_command
from tritonclient.utils import InferenceServerException

from tests.e2e.fleet import Fleet, wait_for
from tests.e2e.operator import Operator
from tests.factories import MODELS_DIR, manifest
from triton_models.digits import build as digits_build
from triton_models.packaging import pack_files

pytestmark = [pytest.mark.e2e]

BROKEN_MODEL = "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('weights missing')\n"


@pytest.fixture(scope="module")
def fleet(db_unblocked: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    agents = {"node-a": (), "node-b": ("--inventory", "simulated", "--simulate-gpus", "H100-80GB,A30-24GB")}
    with Fleet.running(tmp_path_factory.mktemp("fleet"), agents) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def story(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    erin = Operator("erin")
    out = tmp_path_factory.mktemp("build")
    digits_build.build(out)
    digits_artifact = (out / "digits.tar.gz").read_bytes()

    erin.post("models/", {"name": "digits", "description": manifest("digits")["description"]})
    erin.post("models/", {"name": "countdown"})
    erin.post("models/", {"name": "not-deployed"})
    v1 = erin.upload("digits", digits_artifact, note="trained on sklearn digits")
    d1 = erin.deploy(v1, ["node-a", "node-b"], fleet)
    assert d1["state"] == "live", d1
    cv = erin.upload("countdown", pack_files({"model.py": (MODELS_DIR / "countdown" / "model.py").read_bytes()}))
    assert erin.deploy(cv, ["node-a"], fleet)["state"] == "live"

    for slug in ("acme", "globex"):
        erin.post("tenants/", {"slug": slug, "name": slug.title()})
    for model in ("digits", "countdown", "not-deployed"):
        erin.post("grants/", {"tenant": "acme", "model": model})
    acme_key = erin.post("api-keys/", {"tenant": "acme", "name": "app"})
    globex_key = erin.post("api-keys/", {"tenant": "globex", "name": "app"})
    return {
        "erin": erin,
        "v1": v1,
        "d1": d1,
        "digits_artifact": digits_artifact,
        "acme": acme_key["key"],
        "acme_key_id": acme_key["id"],
        "globex": globex_key["key"],
    }


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@functools.cache
def _weights() -> dict[str, Any]:
    return digits_build.train()[0]  # deterministic, and about 2 s each time


def _expected_labels(images: np.ndarray) -> np.ndarray:
    """What the model must answer: the same MLP computed here from the build's weights."""
    weights = _weights()
    x = images.astype(np.float32) / weights["scale"]
    hidden = np.maximum(x @ weights["w1"] + weights["b1"], 0.0)
    return np.asarray((hidden @ weights["w2"] + weights["b2"]).argmax(axis=1))


def _infer_batch(client: grpcclient.InferenceServerClient, images: np.ndarray, key: str, timeout: float = 30.0) -> Any:
    tensor = grpcclient.InferInput("IMAGE", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images.astype(np.float32))
    return client.infer("digits", [tensor], headers=_auth(key), client_timeout=timeout)


def test_agents_report_their_gpus(fleet: Fleet, story: dict[str, Any]) -> None:
    erin = story["erin"]
    assert erin.get("nodes/node-a/")["gpus"] == [], "node-a is a CPU node"
    gpus = wait_for("node-b's GPUs", lambda: erin.get("nodes/node-b/")["gpus"])
    assert [(g["index"], g["model"], g["mig_enabled"]) for g in gpus] == [(0, "H100-80GB", False), (1, "A30-24GB", False)]
    assert all(g["uuid"].startswith("GPU-") for g in gpus)
    from appliance.metrics.models import GpuPoint

    # Each heartbeat's read-outs go into the console's time series, per GPU and minute.
    points = wait_for("node-b's GPU read-outs in the time series",
                      lambda: list(GpuPoint.objects.filter(node="node-b", resolution="minute").values_list("gpu_index", flat=True)))  # fmt: skip
    assert set(points) == {0, 1}


def test_stock_sync_client_gets_correct_predictions(fleet: Fleet, story: dict[str, Any]) -> None:
    _, x_test, _, y_test = digits_build.split()
    client = grpcclient.InferenceServerClient(fleet.gateway)
    labels = []
    for start in range(0, len(x_test), 64):
        result = _infer_batch(client, x_test[start : start + 64], story["acme"])
        assert result.get_response().model_version == "1"
        probabilities = result.as_numpy("PROBABILITIES")
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
        labels.append(result.as_numpy("LABEL").reshape(-1))
    predicted = np.concatenate(labels)
    assert np.array_equal(predicted, _expected_labels(x_test))
    assert (predicted == y_test).mean() >= 0.95


def test_stock_asyncio_client_and_metadata_calls(fleet: Fleet, story: dict[str, Any]) -> None:
    _, x_test, _, y_test = digits_build.split()

    async def scenario() -> None:
        client = aioclient.InferenceServerClient(fleet.gateway)
        headers = _auth(story["acme"])
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("digits", headers=headers)
        metadata = await client.get_model_metadata("digits", headers=headers)
        assert [t.name for t in metadata.inputs] == ["IMAGE"]
        config = await client.get_model_config("digits", headers=headers)
        assert config.config.max_batch_size == 64
        tensors = []
        for image in x_test[:32]:
            tensor = aioclient.InferInput("IMAGE", [1, 64], "FP32")
            tensor.set_data_from_numpy(image.reshape(1, 64).astype(np.float32))
            tensors.append(tensor)
        results = await asyncio.gather(*(client.infer("digits", [t], headers=headers) for t in tensors))
        labels = np.array([r.as_numpy("LABEL")[0][0] for r in results])
        assert np.array_equal(labels, _expected_labels(x_test[:32]))
        await client.close()

    asyncio.run(scenario())


def _code(call: Any) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


def test_refusals_use_precise_codes_and_leak_nothing(fleet: Fleet, story: dict[str, Any]) -> None:
    client = grpcclient.InferenceServerClient(fleet.gateway)
    image = np.zeros((1, 64), np.float32)
    status, _ = _code(lambda: _infer_batch(client, image, ""))
    assert status == "StatusCode.UNAUTHENTICATED"
    status, _ = _code(lambda: client.infer("digits", [], headers={}))
    assert status == "StatusCode.UNAUTHENTICATED"
    status, _ = _code(lambda: _infer_batch(client, image, "ak_00000000_not-a-real-key"))
    assert status == "StatusCode.UNAUTHENTICATED"
    # Another tenant's key: the same answer as for a model that does not exist.
    not_granted = _code(lambda: _infer_batch(client, image, story["globex"]))
    tensor = grpcclient.InferInput("IMAGE", [1, 64], "FP32")
    tensor.set_data_from_numpy(image)
    unknown = _code(lambda: client.infer("no-such-model", [tensor], headers=_auth(story["acme"])))
    assert not_granted[0] == unknown[0] == "StatusCode.NOT_FOUND"
    assert not_granted[1].replace("digits", "X") == unknown[1].replace("no-such-model", "X")
    scoped = story["erin"].post("api-keys/", {"tenant": "acme", "name": "stream-only", "models": ["countdown"]})["key"]
    assert _code(lambda: _infer_batch(client, image, scoped)) == not_granted, "a key scoped to other models"
    status, message = _code(lambda: client.infer("not-deployed", [tensor], headers=_auth(story["acme"])))
    assert status == "StatusCode.UNAVAILABLE" and "no live replica" in message
    wrong_shape = grpcclient.InferInput("IMAGE", [1, 63], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 63), np.float32))
    status, message = _code(lambda: client.infer("digits", [wrong_shape], headers=_auth(story["acme"])))
    assert status == "StatusCode.INVALID_ARGUMENT" and "IMAGE" in message

    channel = grpc.insecure_channel(fleet.gateway)
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff", metadata=[("authorization", f"Bearer {story['acme']}")])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelUnload")(b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, "model control never passes the gateway"


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("gateway_")}


def test_native_front_answers_the_hot_path_and_hands_the_rest_to_the_python_gateway(
    fleet: Fleet, story: dict[str, Any]
) -> None:
    import time

    from sklearn.datasets import load_digits

    from appliance.gateway.stats import window
    from tests.e2e.fleet import free_port

    port = free_port()
    proc, address = fleet.start_gateway("--native-metrics-bind", f"127.0.0.1:{port}", name="gateway-native")
    client = grpcclient.InferenceServerClient(address)
    wait_for("the native front", lambda: client.is_server_ready(), procs=[proc])
    ok = 'gateway_requests_total{plane="native",tenant="acme",model="digits",status="OK"}'
    images = load_digits().data[:8].astype(np.float32)
    # Until the Python gateway's first snapshot export is loaded, everything is handed off.
    wait_for("the native path", lambda: _infer_batch(client, images[:1], story["acme"]) and _scrape(port).get(ok, 0) > 0,
             procs=[proc])  # fmt: skip
    before, started = _scrape(port), time.time()
    expected = _expected_labels(images)
    for i in range(20):
        labels = _infer_batch(client, images[i % 8 : i % 8 + 1], story["acme"]).as_numpy("LABEL").ravel()
        assert labels[0] == expected[i % 8]
    after = _scrape(port)
    assert after[ok] - before[ok] == 20, "the native front answered every hot-path request itself"
    assert after.get('gateway_native_handoffs_total{reason="method"}', 0) >= 1  # ServerReady went to Python
    # What the rollout gates and the console read: the same Redis statistics the Python gateway writes.
    live = str(story.get("live_version", "1"))
    wait_for("the native statistics in Redis", lambda: window("digits", live, started - 1, time.time() + 1).requests >= 20)
    # The console's minute counts (the requests above can span more than two minutes on a busy machine).
    wait_for("the native traffic counts in Redis", lambda: _gateway_traffic("acme", "digits", since=started)["n"] >= 20,
             timeout=10)  # fmt: skip

    # Anything off the hot path gets the Python gateway's own answer, and is counted as handed off.
    def handoffs(reason: str) -> float:
        return _scrape(port).get(f'gateway_native_handoffs_total{{reason="{reason}"}}', 0)

    unknown, ungranted, malformed = handoffs("unknown key"), handoffs("not granted"), handoffs("malformed")
    status, message = _code(lambda: _infer_batch(client, images[:1], "ak_nope_nope"))
    assert (status, message) == ("StatusCode.UNAUTHENTICATED", "invalid, expired or revoked API key")
    assert handoffs("unknown key") == unknown + 1
    status, message = _code(lambda: _infer_batch(client, images[:1], story["globex"]))
    assert status == "StatusCode.NOT_FOUND" and "not available to this API key" in message
    assert handoffs("not granted") == ungranted + 1
    raw = grpc.insecure_channel(address).unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\xff\xff", metadata=(("authorization", f"Bearer {story['acme']}"),), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid ModelInferRequest" in info.value.details()
    assert handoffs("malformed") == malformed + 1
    assert client.get_model_metadata("digits", headers=_auth(story["acme"])).name == "digits"

    # A snapshot nobody refreshes is not trusted: with the Python gateway frozen, the front
    # answers nothing itself (a key revoked meanwhile must not live on in it).
    def stale() -> bool:
        try:
            _infer_batch(client, images[:1], story["acme"], timeout=1)
        except InferenceServerException:
            pass  # handed to the frozen gateway: the deadline passes
        return handoffs("stale snapshot") > 0

    os.kill(proc.popen.pid, signal.SIGSTOP)
    try:
        wait_for("the front to stop trusting its snapshot", stale, timeout=30)
    finally:
        os.kill(proc.popen.pid, signal.SIGCONT)
    answered = _scrape(port)[ok]
    wait_for("the native path again", lambda: _infer_batch(client, images[:1], story["acme"]) and _scrape(port)[ok] > answered)

    # The exact cache, answered by the front itself: a repeated request is a hit it counts,
    # with the cached answer and this request's id.
    hit = 'gateway_cache_lookups_total{plane="native",model="digits",result="hit"}'
    salted = images[:1] + 0.5  # a request nobody cached before
    tensor = grpcclient.InferInput("IMAGE", [1, 64], "FP32")
    tensor.set_data_from_numpy(salted)

    def ask(request_id: str) -> Any:
        return client.infer("digits", [tensor], headers=_auth(story["acme"]), request_id=request_id, client_timeout=10)

    erin = story["erin"]
    assert erin.client.patch("/api/v1/models/digits/", {"response_cache": True}, format="json").status_code == 200
    try:
        wait_for("a native cache hit", lambda: ask("warm") and _scrape(port).get(hit, 0) > 0)
        hits = _scrape(port)[hit]
        answer = ask("second")
        assert _scrape(port)[hit] == hits + 1 and answer.get_response().id == "second"
        assert np.array_equal(answer.as_numpy("PROBABILITIES"), ask("third").as_numpy("PROBABILITIES"))
        assert answer.as_numpy("LABEL")[0] == _expected_labels(salted)[0]
    finally:
        erin.client.patch("/api/v1/models/digits/", {"response_cache": False}, format="json")

    def uncached() -> bool:
        lookups = sum(v for k, v in _scrape(port).items() if k.startswith("gateway_cache_lookups_total"))
        ask("after")
        return sum(v for k, v in _scrape(port).items() if k.startswith("gateway_cache_lookups_total")) == lookups

    wait_for("the cache to be off in both gateways", uncached)  # the front's view is the Python gateway's
    _forget_cached_answers("acme")  # nothing of this test left for later ones

    # The front never outlives its gateway, even one killed outright: no front serving a
    # snapshot nobody refreshes (a revoked key must not live on).
    proc.popen.kill()
    proc.popen.wait(timeout=30)
    fleet.procs.remove(proc)
    wait_for("gatewayd to follow its gateway",
             lambda: not [p for p in Path("/proc").iterdir() if p.name.isdigit() and address.encode() in _cmdline(p)])  # fmt: skip


def _forget_cached_answers(tenant: str) -> None:
    """Leaves no cached answer of this tenant behind for later tests."""
    import redis
    from django.conf import settings

    from appliance.accounts.models import Tenant

    tenant_id = Tenant.objects.get(slug=tenant).pk
    with redis.Redis.from_url(settings.REDIS_URL) as client:
        for key in client.scan_iter(f"{settings.INSTANCE}:cache:{tenant_id}:*"):
            client.delete(key)


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("fault", ["garbage", "unknown-version"])
def test_a_snapshot_the_front_cannot_read_hands_every_call_to_the_python_gateway(
    fleet: Fleet, story: dict[str, Any], fault: str
) -> None:
    """Half a document, or one of a version the front does not know (a Python plane newer than
    its front): the front answers nothing itself, says so in its metrics, and every call gets
    the Python gateway's answer -- a key revoked meanwhile included."""
    import time

    from sklearn.datasets import load_digits

    from tests.e2e.fleet import free_port

    port = free_port()
    saved = dict(fleet.env)
    fleet.env["APPLIANCE_GATEWAY_SNAPSHOT_FAULT"] = fault  # settings.py: drills only
    try:
        proc, address = fleet.start_gateway("--native-metrics-bind", f"127.0.0.1:{port}", name=f"gateway-{fault}")
    finally:
        fleet.env.clear()
        fleet.env.update(saved)
    client = grpcclient.InferenceServerClient(address)
    try:
        wait_for("the front", lambda: client.is_server_ready(), procs=[proc])
        wait_for("the front to refuse the snapshot",
                 lambda: _scrape(port).get("gateway_native_snapshot_refused_total", 0) > 0, procs=[proc])  # fmt: skip
        images = load_digits().data[:10].astype(np.float32)
        labels = _infer_batch(client, images, story["acme"]).as_numpy("LABEL").ravel()
        assert list(labels) == list(_expected_labels(images))
        for i in range(10):
            assert _infer_batch(client, images[i : i + 1], story["acme"]).as_numpy("LABEL")[0] == labels[i]
        metrics = _scrape(port)
        assert metrics["gateway_native_snapshot_ok"] == 0
        assert metrics.get('gateway_native_handoffs_total{reason="snapshot refused"}', 0) >= 11
        assert not [k for k in metrics if k.startswith("gateway_requests_total") and 'status="OK"' in k], (
            "the front answered nothing itself"
        )

        erin = story["erin"]
        key = erin.post("api-keys/", {"tenant": "acme", "name": f"revoked-under-{fault}"})
        assert _infer_batch(client, images[:1], key["key"]).as_numpy("LABEL") is not None
        erin.post(f"api-keys/{key['id']}/revoke/", {})
        revoked_at = time.monotonic()

        def refused() -> bool:
            try:
                _infer_batch(client, images[:1], key["key"])
            except InferenceServerException as exc:
                return str(exc.status()) == "StatusCode.UNAUTHENTICATED"
            return False

        wait_for("the revoked key to be refused", refused, timeout=5)
        assert time.monotonic() - revoked_at < 5
    finally:
        proc.tree.stop()
        fleet.procs.remove(proc)


def test_revoked_key_is_refused_within_seconds(fleet: Fleet, story: dict[str, Any]) -> None:
    erin = story["erin"]
    key = erin.post("api-keys/", {"tenant": "acme", "name": "short-lived"})
    client = grpcclient.InferenceServerClient(fleet.gateway)
    image = np.zeros((1, 64), np.float32)
    assert _infer_batch(client, image, key["key"]).as_numpy("LABEL") is not None
    erin.post(f"api-keys/{key['id']}/revoke/", {})

    def refused() -> bool:
        try:
            _infer_batch(client, image, key["key"])
        except InferenceServerException as exc:
            return str(exc.status()) == "StatusCode.UNAUTHENTICATED"
        return False

    wait_for("the revoked key to be refused", refused, timeout=5)


def test_streaming_through_model_stream_infer(fleet: Fleet, story: dict[str, Any]) -> None:
    client = grpcclient.InferenceServerClient(fleet.gateway)
    events: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)), headers=_auth(story["acme"]))
    count = grpcclient.InferInput("COUNT", [1], "INT32")
    count.set_data_from_numpy(np.array([8], dtype=np.int32))
    client.async_stream_infer("countdown", [count], enable_empty_final_response=True)
    values = []
    while True:
        result, error = events.get(timeout=30)
        assert error is None, error
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
        values.append(int(result.as_numpy("VALUE")[0]))
    client.stop_stream()
    assert values == [7, 6, 5, 4, 3, 2, 1, 0]
    # The gateway counted the stream for the console: time to first response and responses per second.
    counted = wait_for("the stream in the gateway's traffic counts", lambda: (c := _gateway_traffic("acme", "countdown"))["streams"] and c)
    assert counted["sresp"] >= 8 and counted["ttfr"] > 0 and counted["n"] >= 1


def _gateway_traffic(tenant: str, model: str, since: float | None = None) -> dict[str, float]:
    """What the gateways counted for (tenant, model) in the minutes from `since` (default: the
    last one) to this one (Redis, before collection)."""
    import time
    from collections import defaultdict

    import redis
    from django.conf import settings

    from appliance.gateway.stats import traffic_key

    minute = int(time.time()) // 60 * 60
    first = int(since) // 60 * 60 if since is not None else minute - 60
    totals: dict[str, float] = defaultdict(float)
    with redis.Redis.from_url(settings.REDIS_URL) as client:
        for key in (traffic_key(at) for at in range(first, minute + 60, 60)):
            for field, value in client.hgetall(key).items():
                t, m, name = field.decode().split("|")
                if (t, m) == (tenant, model):
                    totals[name] += float(value)
    return totals


def test_both_nodes_serve_the_deployment(fleet: Fleet, story: dict[str, Any]) -> None:
    client = grpcclient.InferenceServerClient(fleet.gateway)
    for _ in range(40):
        _infer_batch(client, np.zeros((1, 64), np.float32), story["acme"])
    for node, ports in fleet.node_ports.items():
        direct = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
        stats = direct.get_inference_statistics("digits", "1").model_stats[0]
        assert stats.inference_stats.success.count > 0, f"{node} served nothing"


def test_failed_rollout_keeps_the_previous_version_serving(fleet: Fleet, story: dict[str, Any]) -> None:
    erin = story["erin"]
    broken = erin.upload("digits", pack_files({"model.py": BROKEN_MODEL.encode()}), note="broken on purpose")
    deployment = erin.deploy(broken, ["node-a", "node-b"], fleet)
    assert deployment["state"] == "failed"
    assert "weights missing" in deployment["error"] or "refused to load" in deployment["error"]
    assert erin.get(f"deployments/{story['d1']['id']}/")["state"] == "live"
    result = _infer_batch(grpcclient.InferenceServerClient(fleet.gateway), np.zeros((1, 64), np.float32), story["acme"])
    assert result.get_response().model_version == "1"
    for ports in fleet.node_ports.values():
        direct = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
        assert direct.is_model_ready("digits", "1")
        assert not direct.is_model_ready("digits", str(broken["number"]))


def test_new_version_replaces_the_old_one(fleet: Fleet, story: dict[str, Any]) -> None:
    erin = story["erin"]
    v = erin.upload("digits", story["digits_artifact"], note="same weights, re-uploaded")
    assert erin.deploy(v, ["node-a", "node-b"], fleet)["state"] == "live"
    assert erin.get(f"deployments/{story['d1']['id']}/")["state"] == "superseded"
    client = grpcclient.InferenceServerClient(fleet.gateway)
    wait_for(
        "the gateway to serve the new version",
        lambda: _infer_batch(client, np.zeros((1, 64), np.float32), story["acme"]).get_response().model_version
        == str(v["number"]),
        timeout=10,
    )
    for ports in fleet.node_ports.values():
        direct = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
        wait_for("the old version to be unloaded", lambda d=direct: not d.is_model_ready("digits", "1"), timeout=30)
    story["live_version"] = str(v["number"])


def test_node_agent_restarts_a_dead_triton_and_reloads_its_models(fleet: Fleet, story: dict[str, Any]) -> None:
    old_pid = fleet.triton_pid("node-a")
    os.kill(old_pid, signal.SIGKILL)
    port = fleet.node_ports["node-a"]["grpc"]
    direct = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    live = story.get("live_version", "1")
    wait_for("Triton on node-a to come back with digits loaded", lambda: direct.is_model_ready("digits", live), timeout=60)
    assert fleet.triton_pid("node-a") != old_pid
    wait_for("countdown to be reloaded too", lambda: direct.is_model_ready("countdown"), timeout=30)
    image = np.zeros((1, 64), np.float32)
    assert _infer_batch(grpcclient.InferenceServerClient(fleet.gateway), image, story["acme"]).as_numpy("LABEL") is not None


def test_gateway_over_mutual_tls(fleet: Fleet, story: dict[str, Any], tmp_path: Path) -> None:
    from tests.e2e.certs import make_pki

    pki = make_pki(tmp_path / "pki")
    proc, address = fleet.start_gateway(
        "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"]), "--tls-client-ca", str(pki["ca"]),
        name="gateway-mtls",
    )  # fmt: skip
    trusted = {"ssl": True, "root_certificates": str(pki["ca"])}
    client = grpcclient.InferenceServerClient(
        address, **trusted, private_key=str(pki["client_key"]), certificate_chain=str(pki["client"])
    )
    wait_for("the TLS gateway", lambda: client.is_server_ready(), procs=[proc])
    image = np.zeros((1, 64), np.float32)
    assert _infer_batch(client, image, story["acme"]).as_numpy("LABEL") is not None
    no_client_cert = grpcclient.InferenceServerClient(address, **trusted)
    with pytest.raises(InferenceServerException):
        _infer_batch(no_client_cert, image, story["acme"])
    plaintext = grpcclient.InferenceServerClient(address)
    with pytest.raises(InferenceServerException):
        plaintext.is_server_live(client_timeout=5)


def _settled(read: Any, expected: int, timeout: float = 5.0) -> int:
    """Triton updates its statistics as it releases a request, a moment after the answer
    left: wait (briefly) until the count reaches what is expected, then report it."""
    try:
        wait_for(f"a count of {expected}", lambda: read() >= expected, timeout=timeout)
    except AssertionError:
        pass  # the caller's assertion reports the real count
    return int(read())


def _successes(fleet: Fleet, node: str, version: str) -> int:
    direct = grpcclient.InferenceServerClient(f"127.0.0.1:{fleet.node_ports[node]['grpc']}")
    return int(direct.get_inference_statistics("digits", version).model_stats[0].inference_stats.success.count)


def test_residency_policy_decides_where_a_tenants_requests_go(fleet: Fleet, story: dict[str, Any]) -> None:
    from appliance.audit.models import AuditEvent

    erin = story["erin"]
    erin.post("tenants/", {"slug": "vault", "name": "Vault", "classification": "restricted"})
    grant = erin.post("grants/", {"tenant": "vault", "model": "digits"})
    key = erin.post("api-keys/", {"tenant": "vault", "name": "app"})["key"]
    client = grpcclient.InferenceServerClient(fleet.gateway)
    image = np.zeros((1, 64), np.float32)
    status, message = _code(lambda: _infer_batch(client, image, key))
    assert status == "StatusCode.FAILED_PRECONDITION"
    assert "residency policy" in message and "restricted data of tenant 'vault'" in message and "default" in message
    # The gateway audits the denial off the request path.
    wait_for("the denial in the audit trail",
             lambda: AuditEvent.objects.filter(action="policy.deny", actor="tenant:vault", origin="grpc").exists(), timeout=5)  # fmt: skip

    # Restricted data may go to HIPAA-tagged nodes only; node-b becomes one.
    erin.post("policy-rules/", {"position": 10, "name": "restricted-hipaa-only", "effect": "allow",
                                "classifications": ["restricted"], "require_tags": ["hipaa"]})  # fmt: skip
    response = erin.client.patch("/api/v1/nodes/node-b/", {"compliance_tags": ["hipaa"]}, format="json")
    assert response.status_code == 200
    wait_for("vault's requests to be served", lambda: _infer_batch(client, image, key).as_numpy("LABEL") is not None, timeout=10)
    live = story.get("live_version", "1")
    before_a, before_b = _successes(fleet, "node-a", live), _successes(fleet, "node-b", live)
    for _ in range(20):
        _infer_batch(client, image, key)
    assert _settled(lambda: _successes(fleet, "node-b", live), before_b + 20) == before_b + 20
    assert _successes(fleet, "node-a", live) == before_a, "a forbidden replica got restricted data"

    # No payload of a restricted request lands in any log or in the audit trail.
    secret = np.full((1, 64), 13.371337, np.float32)
    _infer_batch(client, secret, key)
    needles = [secret.tobytes()[:16], b"13.371337", b"13.37134"]
    for log in fleet.workdir.rglob("*.log"):
        content = log.read_bytes()
        assert not any(n in content for n in needles), f"payload found in {log}"
    # The full decimal, not "13.37": timestamps such as "…:13.374…" hold that by chance.
    trail = json.dumps(list(AuditEvent.objects.values("changes")), default=str)
    assert "13.37133" not in trail and "13.37134" not in trail
    assert erin.client.delete(f"/api/v1/grants/{grant['id']}/").status_code == 204


def _health(name: str) -> str:
    from appliance.nodes.models import Node

    return Node.objects.get(name=name).health


def _both_healthy(fleet: Fleet) -> None:
    wait_for("both nodes healthy", lambda: _health("node-a") == _health("node-b") == "healthy", timeout=20, procs=fleet.procs)


def test_a_wedged_triton_makes_its_node_unhealthy_and_traffic_moves(fleet: Fleet, story: dict[str, Any]) -> None:
    """A hung server (SIGSTOP) still accepts connections: only a probe that must be
    answered catches it. GPUStack's check failed open on exactly this."""
    from appliance.nodes.models import Node

    _both_healthy(fleet)
    pid = fleet.triton_pid("node-a")
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for("node-a unhealthy", lambda: _health("node-a") == "unhealthy", timeout=15)
        assert any("Triton" in r for r in Node.objects.get(name="node-a").health_reasons)
        client = grpcclient.InferenceServerClient(fleet.gateway)
        image = np.zeros((1, 64), np.float32)
        live = story.get("live_version", "1")

        # A key the gateway has never seen makes it re-read the fleet at once, so the
        # first request with it is routed by a snapshot that knows node-a is unhealthy.
        fresh = story["erin"].post("api-keys/", {"tenant": "acme", "name": "after-wedge"})["key"]
        before = _successes(fleet, "node-b", live)
        assert _infer_batch(client, image, fresh, timeout=10).as_numpy("LABEL") is not None
        assert _settled(lambda: _successes(fleet, "node-b", live), before + 1) == before + 1
        # A known key is answered by the native front, from the snapshot file the Python
        # gateway exports; the front re-reads it every 50 ms, so its view can trail the Python
        # gateway's by that much (CI once sent one of the 20 below to node-a within it).
        assert wait_for("the native front's view without node-a", lambda: fleet.native_routes("digits") == {"node-b"},
                        timeout=10, procs=fleet.procs)  # fmt: skip
        before = _successes(fleet, "node-b", live)
        for _ in range(20):
            assert _infer_batch(client, image, story["acme"]).as_numpy("LABEL") is not None
        assert _settled(lambda: _successes(fleet, "node-b", live), before + 20) == before + 20, "every request went to the healthy node"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for("node-a healthy again", lambda: _health("node-a") == "healthy", timeout=20)
    history = [(h.previous, h.health) for h in Node.objects.get(name="node-a").health_history.all()[:2]]
    assert history == [("unhealthy", "healthy"), ("healthy", "unhealthy")]


def test_gpu_signals_drive_node_health(fleet: Fleet, story: dict[str, Any]) -> None:
    from appliance.nodes.inventory.simulated import SimulatedInventory
    from appliance.nodes.models import Node

    _both_healthy(fleet)
    gpus = SimulatedInventory(state_path=fleet.workdir / "node-b" / "simulated-gpus.json")
    gpus.inject(0, ecc_corrected=5000)
    wait_for("node-b degraded", lambda: _health("node-b") == "degraded", timeout=15)
    assert Node.objects.get(name="node-b").health_reasons == ["GPU 0: 5000 corrected ECC errors ≥ 1000"]
    gpus.inject(1, xid=79)
    wait_for("node-b unhealthy", lambda: _health("node-b") == "unhealthy", timeout=15)
    assert any("GPU 1: XID 79" in r for r in Node.objects.get(name="node-b").health_reasons)
    gpus.inject(0, clear=True)
    gpus.inject(1, clear=True)
    wait_for("node-b healthy again", lambda: _health("node-b") == "healthy", timeout=15)


def _reconfigure(erin: Operator, body: dict[str, Any], fleet: Fleet) -> dict[str, Any]:
    run = erin.post("nodes/node-b/reconfigure/", body)
    return dict(wait_for(f"reconfiguration {body}", lambda: (r := erin.get(f"reconfigurations/{run['id']}/"))["state"]
                         in ("succeeded", "failed") and r, timeout=90, procs=fleet.procs))  # fmt: skip


def _layout(erin: Operator, index: int) -> list[tuple[str, int]]:
    gpu = erin.get("nodes/node-b/")["gpus"][index]
    return sorted((d["profile"], d["start"]) for d in gpu["mig_devices"])


def test_mig_reconfiguration_end_to_end_while_traffic_flows(fleet: Fleet, story: dict[str, Any]) -> None:
    """H100 on node-b goes 3g+2g+1g with one Triton per MIG device; the deployment keeps
    answering through the gateway (node-a serves while node-b drains); a second run is refused."""
    import threading

    erin = story["erin"]
    _both_healthy(fleet)
    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def traffic() -> None:
        client = grpcclient.InferenceServerClient(fleet.gateway)
        image = np.zeros((1, 64), np.float32)
        while not stop.is_set():
            try:
                _infer_batch(client, image, story["acme"], timeout=10)
                served[0] += 1
            except InferenceServerException as exc:
                failures.append(str(exc))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        run = erin.post("nodes/node-b/reconfigure/", {"gpu": 0, "layout": ["3g.40gb", "2g.20gb", "1g.10gb"]})
        busy = erin.client.post("/api/v1/nodes/node-b/reconfigure/", {"gpu": 1, "layout": ["4g.24gb"]}, format="json")
        assert busy.status_code == 409 and "already pending or running" in busy.json()["detail"]
        done = wait_for("the reconfiguration", lambda: (r := erin.get(f"reconfigurations/{run['id']}/"))["state"]
                        in ("succeeded", "failed") and r, timeout=90, procs=fleet.procs)  # fmt: skip
    finally:
        stop.set()
        worker.join()
    assert done["state"] == "succeeded", done
    assert [s["name"] for s in done["steps"]] == ["preflight", "drain", "wait_inflight", "unload", "mig_mode",
                                                   "repartition", "start_tritons", "reload", "verify", "undrain"]
    assert all(s["state"] == "succeeded" for s in done["steps"])
    assert failures == [] and served[0] > 0, f"{len(failures)} failed requests during the reconfiguration: {failures[:3]}"
    assert _layout(erin, 0) == [("1g.10gb", 6), ("2g.20gb", 4), ("3g.40gb", 0)]
    devices = erin.get("nodes/node-b/")["gpus"][0]["mig_devices"]
    for device in devices:
        assert grpcclient.InferenceServerClient(device["grpc_address"]).is_server_ready(), device
        # Its metrics endpoint too (where the gateway reads the slice's engines' gauges).
        page = urllib.request.urlopen(f"http://{device['metrics_address']}/metrics", timeout=5).read().decode()
        assert "nv_" in page, device
    assert len({d["grpc_address"] for d in devices}) == 3, "one Triton per MIG device"
    assert erin.get("nodes/node-b/")["admin_state"] == "active"
    wait_for("node-b healthy after the change", lambda: _health("node-b") == "healthy", timeout=20)


@pytest.mark.parametrize("step", ["preflight", "drain", "wait_inflight", "unload", "mig_mode", "repartition",
                                  "start_tritons", "reload", "verify", "undrain"])  # fmt: skip
def test_a_failure_at_any_step_restores_the_previous_layout(fleet: Fleet, story: dict[str, Any], step: str) -> None:
    erin = story["erin"]
    before = _layout(erin, 0)
    assert before, "runs after the successful reconfiguration"
    done = _reconfigure(erin, {"gpu": 0, "layout": ["7g.80gb"], "inject_failure_at": step}, fleet)
    assert done["state"] == "failed" and f"step {step} failed: fault injected" in done["error"]
    assert done["steps"][-1]["name"] == "restore" and done["steps"][-1]["state"] == "succeeded"
    assert _layout(erin, 0) == before
    node = erin.get("nodes/node-b/")
    assert node["admin_state"] == "active" and "rolled back" in node["fault"]
    wait_for("node-b degraded with the reason", lambda: _health("node-b") == "degraded", timeout=15)
    erin.post("nodes/node-b/clear-fault/", {})
    wait_for("node-b healthy again", lambda: _health("node-b") == "healthy", timeout=15)


def test_agent_killed_mid_reconfiguration_ends_consistent(fleet: Fleet, story: dict[str, Any]) -> None:
    erin = story["erin"]
    before = _layout(erin, 0)
    run = erin.post("nodes/node-b/reconfigure/", {"gpu": 0, "layout": ["7g.80gb"], "inject_failure_at": "kill:repartition"})
    agent = next(p for p in reversed(fleet.procs) if p.name == "agent-node-b")
    wait_for("the agent to die mid-run", lambda: agent.popen.poll() is not None, timeout=60)
    fleet.restart_agent("node-b")
    done = wait_for("the re-delivered run to roll back", lambda: (r := erin.get(f"reconfigurations/{run['id']}/"))["state"]
                    in ("succeeded", "failed") and r, timeout=90, procs=fleet.procs)  # fmt: skip
    assert done["state"] == "failed" and "interrupted at step repartition" in done["error"]
    assert _layout(erin, 0) == before
    assert erin.get("nodes/node-b/")["admin_state"] == "active"
    erin.post("nodes/node-b/clear-fault/", {})
    _both_healthy(fleet)


def _stats(address: str, version: str) -> int:
    client = grpcclient.InferenceServerClient(address)
    return int(client.get_inference_statistics("digits", version).model_stats[0].inference_stats.success.count)


def test_tenant_slice_serves_its_tenant_and_nobody_else(fleet: Fleet, story: dict[str, Any]) -> None:
    erin = story["erin"]
    _both_healthy(fleet)
    live = story.get("live_version", "1")
    erin.post("tenants/", {"slug": "initech", "name": "Initech"})
    erin.post("grants/", {"tenant": "initech", "model": "digits"})
    initech = erin.post("api-keys/", {"tenant": "initech", "name": "app"})["key"]
    device = next(d for d in erin.get("nodes/node-b/")["gpus"][0]["mig_devices"] if d["profile"] == "3g.40gb")
    response = erin.client.patch(f"/api/v1/mig-devices/{device['uuid']}/", {"tenant": "acme"}, format="json")
    assert response.status_code == 200 and response.json()["tenant"] == "acme"
    version = next(v for v in erin.get("versions/?model=digits&limit=100")["results"] if str(v["number"]) == live)
    deployment = erin.post("deployments/", {"version": version["id"], "mig_devices": [device["uuid"]]})
    done = wait_for("the slice replica", lambda: (d := erin.get(f"deployments/{deployment['id']}/"))["state"]
                    in ("live", "failed") and d, timeout=60, procs=fleet.procs)  # fmt: skip
    assert done["state"] == "live", done
    assert done["replicas"][0]["mig_uuid"] == device["uuid"]

    client = grpcclient.InferenceServerClient(fleet.gateway)
    image = np.zeros((1, 64), np.float32)
    wait_for("acme routed to its slice",
             lambda: _slice_took(device["grpc_address"], live, client, image, story["acme"]), timeout=10)  # fmt: skip
    mains = {n: _successes(fleet, n, live) for n in ("node-a", "node-b")}
    on_slice = _stats(device["grpc_address"], live)
    for _ in range(10):
        _infer_batch(client, image, story["acme"])
    assert _settled(lambda: _stats(device["grpc_address"], live), on_slice + 10) == on_slice + 10, "acme's requests go to its slice"
    for _ in range(10):
        _infer_batch(client, image, initech)
    assert _stats(device["grpc_address"], live) == on_slice + 10, "nobody else's requests reach the slice"
    total = sum(mains.values()) + 10
    assert _settled(lambda: sum(_successes(fleet, n, live) for n in mains), total) == total
    story["slice_deployment"] = deployment["id"]


def _slice(erin: Operator) -> dict[str, Any]:
    return next(d for d in erin.get("mig-devices/?limit=100")["results"] if d["tenant"] == "acme")


def test_reconfiguration_moves_a_tenant_slice_with_its_replica(fleet: Fleet, story: dict[str, Any]) -> None:
    erin = story["erin"]
    live = story.get("live_version", "1")
    old = _slice(erin)
    too_small = erin.client.post("/api/v1/nodes/node-b/reconfigure/", {"gpu": 0, "layout": ["1g.10gb"] * 4}, format="json")
    assert too_small.status_code == 409 and "no slice for 3g.40gb@0 (digits:" in too_small.json()["detail"]
    done = _reconfigure(erin, {"gpu": 0, "layout": ["4g.40gb", "3g.40gb"]}, fleet)
    assert done["state"] == "succeeded", done
    new = _slice(erin)
    assert new["uuid"] != old["uuid"] and new["profile"] == "3g.40gb" and new["start"] == 4
    replica = erin.get(f"deployments/{story['slice_deployment']}/")["replicas"][0]
    assert replica["mig_uuid"] == new["uuid"] and replica["state"] == "live"
    _both_healthy(fleet)
    client = grpcclient.InferenceServerClient(fleet.gateway)
    image = np.zeros((1, 64), np.float32)
    wait_for("acme served on the moved slice", lambda: _slice_took(new["grpc_address"], live, client, image, story["acme"]),
             timeout=10)  # fmt: skip

    # A failure after the move puts layout, replica and dedication back where they were.
    failed = _reconfigure(erin, {"gpu": 0, "layout": ["7g.80gb"], "inject_failure_at": "verify"}, fleet)
    assert failed["state"] == "failed"
    back = _slice(erin)
    assert (back["profile"], back["start"]) == ("3g.40gb", 4)
    replica = erin.get(f"deployments/{story['slice_deployment']}/")["replicas"][0]
    assert replica["mig_uuid"] == back["uuid"]
    erin.post("nodes/node-b/clear-fault/", {})
    _both_healthy(fleet)
    wait_for("acme served on the restored slice",
             lambda: _slice_took(back["grpc_address"], live, client, image, story["acme"]), timeout=10)  # fmt: skip


def _slice_took(address: str, version: str, client: grpcclient.InferenceServerClient, image: np.ndarray, key: str) -> bool:
    before = _stats(address, version)
    _infer_batch(client, image, key)
    # Called inside wait_for, which asks again: wait only briefly for Triton's count here.
    return _settled(lambda: _stats(address, version), before + 1, timeout=0.5) == before + 1


def test_response_cache_is_per_tenant_and_never_holds_restricted_data(fleet: Fleet, story: dict[str, Any]) -> None:
    import redis
    from django.conf import settings

    from appliance.accounts.models import Tenant

    erin = story["erin"]
    _both_healthy(fleet)
    live = story.get("live_version", "1")
    response = erin.client.patch("/api/v1/models/digits/", {"response_cache": True}, format="json")
    assert response.status_code == 200 and response.json()["response_cache"] is True
    erin.post("tenants/", {"slug": "vault2", "name": "Vault 2", "classification": "restricted"})
    erin.post("tenants/", {"slug": "hooli", "name": "Hooli"})
    for slug in ("vault2", "hooli"):
        erin.post("grants/", {"tenant": slug, "model": "digits"})
    restricted = erin.post("api-keys/", {"tenant": "vault2", "name": "app"})["key"]
    hooli = erin.post("api-keys/", {"tenant": "hooli", "name": "app"})["key"]
    initech = erin.post("api-keys/", {"tenant": "initech", "name": "cache-test"})["key"]
    client = grpcclient.InferenceServerClient(fleet.gateway)
    image = np.full((1, 64), 7.0, np.float32)

    def reached_triton(key: str) -> int:
        """1 if the request reached a Triton, 0 if the gateway answered from its cache. A
        Triton counts a request a moment after answering it: a miss is waited for briefly."""
        before = sum(_successes(fleet, n, live) for n in ("node-a", "node-b"))
        assert _infer_batch(client, image, key).as_numpy("LABEL") is not None
        return _settled(lambda: sum(_successes(fleet, n, live) for n in ("node-a", "node-b")), before + 1, timeout=1.0) - before

    wait_for("the gateway to cache for initech", lambda: reached_triton(initech) == 0, timeout=10)
    first = _infer_batch(client, image, initech).as_numpy("PROBABILITIES")
    assert reached_triton(initech) == 0, "a repeated request is answered from the cache"
    assert reached_triton(hooli) == 1, "another tenant's identical request is not answered from initech's entry"
    assert reached_triton(hooli) == 0, "…it gets its own entry"
    assert reached_triton(restricted) == 1 and reached_triton(restricted) == 1, "restricted data is never cached"
    keys = [k.decode() for k in redis.Redis.from_url(settings.REDIS_URL).keys(f"{settings.INSTANCE}:cache:*")]
    tenants = {k.split(":")[2] for k in keys}
    assert {str(Tenant.objects.get(slug=s).pk) for s in ("initech", "hooli")} <= tenants
    assert str(Tenant.objects.get(slug="vault2").pk) not in tenants
    assert all(f":digits:{live}:" in k for k in keys), ("entries are per model version", [k for k in keys if f":digits:{live}:" not in k])
    assert np.array_equal(first, _infer_batch(client, image, initech).as_numpy("PROBABILITIES"))
    erin.client.patch("/api/v1/models/digits/", {"response_cache": False}, format="json")


def test_the_whole_story_is_in_the_audit_trail(fleet: Fleet, story: dict[str, Any]) -> None:
    from appliance.audit.models import AuditEvent

    d1 = AuditEvent.objects.get(action="deployment.create", target_id=story["d1"]["id"])
    assert (d1.actor, d1.origin) == ("user:erin", "api")
    chain = AuditEvent.objects.filter(correlation_id=d1.correlation_id)
    actions = [(e.origin, e.action, e.actor) for e in chain]
    assert ("task", "deployment.update", "task:rollout_start for user:erin") in actions
    assert ("task", "replica.update", "task:replica_apply for user:erin") in actions
    # Promotion is taken by whichever comes first: the nudge after the last replica
    # (in the request's chain) or the beat's rollout tick.
    promoted = [e for e in AuditEvent.objects.filter(action="deployment.update", target_id=story["d1"]["id"])
                if e.changes.get("state") == ["rolling_out", "live"]]  # fmt: skip
    assert len(promoted) == 1
    assert promoted[0].actor in ("task:rollout_advance for user:erin", "rollout"), promoted[0].actor
    for action in ("model.create", "model_version.create", "tenant.create", "model_grant.create", "api_key.create"):
        assert AuditEvent.objects.filter(action=action, actor="user:erin", origin="api").exists(), action
    assert AuditEvent.objects.filter(action="node.create", origin="agent", actor="agent:node-a").exists()
    assert AuditEvent.objects.filter(action="api_key.update", target_id=story["acme_key_id"]).count() == 0
    everything = json.dumps(list(AuditEvent.objects.values("changes", "target_repr")), default=str)
    assert story["acme"] not in everything and story["globex"] not in everything
    # Five processes wrote to the trail concurrently; the chain is still one unbroken line.
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert "intact" in out.getvalue()
