"""Running an ONNX model on the CPU with ONNX Runtime: its outputs, and how fast it is.

The optimisation job judges candidates on a worker, next to Tritons that are serving,
so sessions here are frugal by default: one thread, and threads that block rather
than spin while they wait for work (spinning keeps a core busy between runs, which
on a shared appliance is somebody else's core).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort


def session(model: bytes, *, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for `model` with `threads` intra- and inter-op threads."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the quantiser's models make ORT chatty
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def run(
    model_or_session: bytes | ort.InferenceSession, inputs: dict[str, np.ndarray], *, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Runs every row of `inputs` through the model, `batch_size` rows per call, and returns
    each output with its rows concatenated in order. Chunks bound the memory one call
    takes, whatever the size of the validation set."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    sess = session(model_or_session) if isinstance(model_or_session, bytes) else model_or_session
    rows = _rows(inputs)
    names = [output.name for output in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, rows, batch_size):
        chunk = {name: array[start : start + batch_size] for name, array in inputs.items()}
        for name, value in zip(names, sess.run(names, chunk), strict=True):
            parts[name].append(np.asarray(value))
    return {name: np.concatenate(values, axis=0) for name, values in parts.items()}


def measure_speed(model: bytes, sample: dict[str, np.ndarray], *, requests: int, concurrency: int) -> dict[str, Any]:
    """Latency and throughput of `model` on one CPU thread per request, as a Triton CPU
    instance would run it. Returns p50_ms and p99_ms over `requests` sequential calls of
    one row each, and throughput_rows_s with `concurrency` threads calling one shared
    session (ORT sessions may be run from several threads at once) until `requests` calls
    are done. Rows are taken from `sample` in turn. A few calls first warm the session up
    (its first run allocates) and are not counted."""
    if requests < 1 or concurrency < 1:
        raise ValueError(f"requests and concurrency must be at least 1, got {requests} and {concurrency}")
    sess = session(model)
    rows = _rows(sample)
    names = [output.name for output in sess.get_outputs()]
    singles = [{name: array[i : i + 1] for name, array in sample.items()} for i in range(rows)]
    for feed in singles[:3]:
        sess.run(names, feed)
    latencies = []
    for i in range(requests):
        started = time.perf_counter()
        sess.run(names, singles[i % rows])
        latencies.append(time.perf_counter() - started)
    p50, p99 = np.percentile(np.array(latencies) * 1000.0, [50, 99])
    elapsed = _concurrent(sess, names, singles, requests, concurrency)
    return {
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "throughput_rows_s": requests / elapsed,
        "requests": requests,
        "concurrency": concurrency,
    }


def _concurrent(
    sess: ort.InferenceSession, names: list[str], singles: list[dict[str, np.ndarray]], requests: int, concurrency: int
) -> float:
    """Seconds for `concurrency` threads to make `requests` calls between them, timed from
    the moment all of them are ready (a barrier), so thread start-up is not counted."""
    shares = [requests // concurrency + (1 if t < requests % concurrency else 0) for t in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def worker(thread: int) -> None:
        barrier.wait()
        for i in range(shares[thread]):
            sess.run(names, singles[(thread + i * concurrency) % len(singles)])

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(worker, t) for t in range(concurrency)]
        barrier.wait()
        started = time.perf_counter()
        for future in futures:
            future.result()
        return time.perf_counter() - started


def _rows(inputs: dict[str, np.ndarray]) -> int:
    if not inputs:
        raise ValueError("no inputs given")
    counts = {name: int(np.shape(array)[0]) for name, array in inputs.items()}
    rows = next(iter(counts.values()))
    if rows == 0 or any(count != rows for count in counts.values()):
        raise ValueError(f"inputs must have the same, non-zero number of rows; got {counts}")
    return rows
