"""The control plane's Triton probe (nodes/tasks.py): a probe that only ran out of time is
asked once more before it counts (a Triton busy for a moment is not a dead one: one failed
check takes the node out of routing), while a refused connection counts at once. Against a
real gRPC server speaking Triton's service, slow on demand."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as service

from appliance.nodes.tasks import _probe


class SlowTriton(service.GRPCInferenceServiceServicer):
    """Answers live/ready; the first `slow` liveness calls take `delay` seconds."""

    def __init__(self, slow: int, delay: float) -> None:
        self.slow, self.delay, self.calls = slow, delay, 0
        self.lock = threading.Lock()

    def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 (Triton's name)
        with self.lock:
            self.calls += 1
            late = self.calls <= self.slow
        if late:
            time.sleep(self.delay)
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ModelReadyResponse(ready=request.name == "digits")


def _serve(triton: SlowTriton) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service.add_GRPCInferenceServiceServicer_to_server(triton, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture
def probe_timeout(settings: Any) -> float:
    settings.HEALTH_PROBE_TIMEOUT_S = 0.2
    return 0.2


def test_a_triton_slow_once_is_asked_again_and_passes(probe_timeout: float) -> None:
    triton = SlowTriton(slow=1, delay=probe_timeout * 3)
    for address in _serve(triton):
        assert _probe(address, [("digits", "1"), ("other", "1")]) == ("", ["other:1"])
    assert triton.calls == 2


def test_a_triton_slow_twice_fails_the_check(probe_timeout: float) -> None:
    triton = SlowTriton(slow=2, delay=probe_timeout * 3)
    for address in _serve(triton):
        error, missing = _probe(address, [])
    assert error == "Deadline Exceeded" and missing == [] and triton.calls == 2


class RefusingTriton(SlowTriton):
    """Answers every liveness call with UNAVAILABLE at once (a Triton shutting down)."""

    def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        with self.lock:
            self.calls += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")


def test_a_refusal_counts_at_once(probe_timeout: float) -> None:
    triton = RefusingTriton(slow=0, delay=0)
    for address in _serve(triton):
        error, _ = _probe(address, [])
    assert error == "shutting down" and triton.calls == 1  # no second try for a refusal


def test_a_slow_node_does_not_make_the_others_look_silent(probe_timeout: float, settings: Any,
                                                          db_unblocked: None) -> None:  # fmt: skip
    """A sweep probes every node first, and a Triton that hangs costs two timeouts; a heartbeat
    read before the probes would look that much older than it is. Here a node whose agent beats
    throughout stays healthy while another node's Triton hangs (CI saw every node of a fleet
    "silent for 10 s" because of a dead node's hung port)."""
    from django.db import connection

    from appliance.nodes.models import Node
    from appliance.nodes.services import node_heartbeat
    from appliance.nodes.tasks import sweep
    from tests.factories import make_node

    settings.NODE_STALE_AFTER_S = 0.3  # the hung probe below costs 2 x 0.2 s
    fine, hung = SlowTriton(slow=0, delay=0), SlowTriton(slow=99, delay=1.0)
    for fine_address in _serve(fine):
        for hung_address in _serve(hung):
            # Committed rows (the heartbeat thread has a connection of its own), removed at the end.
            alive, stuck = make_node(f"sweep-alive-{fine_address[-5:]}"), make_node(f"sweep-stuck-{hung_address[-5:]}")
            Node.objects.filter(pk=alive.pk).update(grpc_address=fine_address)
            Node.objects.filter(pk=stuck.pk).update(grpc_address=hung_address)
            stop = threading.Event()

            def beat(node_id: Any = alive.pk, stop: threading.Event = stop) -> None:  # the agent's, every 50 ms
                try:
                    while not stop.wait(0.05):
                        node_heartbeat(node_id=node_id, triton_ready=True)
                finally:
                    connection.close()

            node_heartbeat(node_id=alive.pk, triton_ready=True)
            beating = threading.Thread(target=beat)
            beating.start()
            try:
                started = time.monotonic()
                health = sweep()
                took = time.monotonic() - started
            finally:
                stop.set()
                beating.join()
                reasons = Node.objects.get(pk=alive.pk).health_reasons
                Node.objects.filter(pk__in=[alive.pk, stuck.pk]).delete()
    assert took >= 2 * probe_timeout, "the hung Triton was asked twice"
    assert health[stuck.name] == "unhealthy"
    assert health[alive.name] == "healthy", reasons
