"""A load of stock tritonclient clients through a gateway, for the end-to-end tests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient

from triton_models.digits import build as digits_build

IMAGES = digits_build.split()[1][:64]


@dataclass
class Load:
    """A pool of stock-client threads hammering a digits-like model through the gateway."""

    address: str
    key: str
    threads: int = 4
    model: str = "digits"
    results: list[tuple[bool, str, float]] = field(default_factory=list)  # (ok, version or error, seconds)
    # (monotonic time the answer came, ok): when requests failed, for outage measurements.
    timeline: list[tuple[float, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self, index: int) -> None:
        client = grpcclient.InferenceServerClient(self.address)
        headers = {"authorization": f"Bearer {self.key}"}
        n = index
        while not self._stop.is_set():
            image = IMAGES[n % len(IMAGES)].reshape(1, 64).astype(np.float32)
            n += self.threads
            tensor = grpcclient.InferInput("IMAGE", [1, 64], "FP32")
            tensor.set_data_from_numpy(image)
            started = time.perf_counter()
            try:
                result = client.infer(self.model, [tensor], headers=headers, client_timeout=10)
                self.results.append((True, result.get_response().model_version, time.perf_counter() - started))
                self.timeline.append((time.monotonic(), True))
            except Exception as exc:  # recorded and asserted on, never swallowed
                self.results.append((False, str(exc)[:200], time.perf_counter() - started))
                self.timeline.append((time.monotonic(), False))

    def failures(self) -> list[str]:
        return [detail for ok, detail, _ in self.results if not ok]

    def versions(self) -> Counter[str]:
        return Counter(detail for ok, detail, _ in self.results if ok)
