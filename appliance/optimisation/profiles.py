"""Profile search: which serving profile gives a version the most throughput on a node
while its p99 latency stays within an objective (Triton Model Analyzer's job, inside the
product).

A small grid of profiles (max batch size, instance count, dynamic batching's queue delay)
is pruned of what cannot differ (`expand`), each profile is the model's own serving profile
with those fields changed (`serving_profile`), and each is measured under the same load:
a fixed number of requests from `concurrency` clients in flight, after a warm-up. The
recommendation (`recommend`) is the profile with the most throughput among those whose p99
meets the objective with no failed request, compared with the no-batching baseline measured
in the same run.

Where the measuring happens (`Bench`): the optimiser's worker starts a private
tritonserver of its own, from the same install the node agents run,
with a scratch repository holding the version under each profile in turn, and drives it
with the stock gRPC client (tritonclient's asyncio client). Not on the node itself: a
search saturates the Triton it measures, so on a serving node it would take the node's
capacity from its live traffic and its numbers would depend on that traffic. On the CPU
nodes of this appliance the optimiser's host is the same kind of machine as the nodes, so
its numbers stand for theirs (`measured_on` records the host). A GPU node's numbers can only
come from its own GPU: the same task would run there, on a queue of that node's own; that is
not built, and a search for a node with GPUs is refused (`refusal`).

The load generator shares the machine with the Triton it measures: every result records the
client's CPU per request. One asyncio process is enough: on MiniLM at concurrency 32 on a
2-core machine (bench/profile_search.py) the client spent 0.3-1.1 ms of CPU per request
(more per request at low rates), never more than about a tenth of one core, so it was not
what limited throughput. Requests cycle through real inputs where the search
names a validation set of the model (rows of one shape, so that Triton can batch them), else
the version's stored samples, else zeros from the signature (fixed dims only).

Nothing here writes to the database: the task (tasks.profile_search) records.

The private Triton is the nodes' own: the same install (`TritonInstall.discover`) and the
same command line and environment (core/tritonserver.py's `TritonSupervisor`), under a
process tree of its own that is not restarted if it dies (a measurement that lost its
server is a failed search, not one to continue).
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import shutil
import signal
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from appliance.catalog import runtimes
from appliance.catalog.artifacts import artifact_read_verified, unpack_into
from appliance.catalog.choices import ArtifactFormat
from appliance.catalog.models import ModelVersion, ValidationSet
from appliance.catalog.profile import normalise
from appliance.catalog.tritonconfig import WARMUP_DIR, render_config, warmup_files
from appliance.core.errors import DomainError
from appliance.core.process import ProcessTree, free_ports, living_processes, wait_until
from appliance.core.tritonserver import TritonInstall, TritonPorts, TritonSupervisor, installed_backends, triton_ready
from appliance.nodes.models import Node
from appliance.optimisation import host

DEFAULT_GRID: dict[str, list[int]] = {"max_batch_size": [1, 8, 32], "instance_count": [1, 2],
                                      "max_queue_delay_us": [0, 2000]}  # fmt: skip
DEFAULT_CONCURRENCY = 32
DEFAULT_REQUESTS = 1000
# Bounds of a search's parameters (API, console and service alike).
GRID_LIMITS: dict[str, tuple[int, int]] = {"max_batch_size": (1, 1024), "instance_count": (1, 16),
                                           "max_queue_delay_us": (0, 1_000_000)}  # fmt: skip
GRID_MAX_VALUES = 6
MAX_PROFILES = 24
CONCURRENCY_RANGE = (1, 256)
REQUESTS_RANGE = (50, 20_000)
OBJECTIVE_MAX_MS = 600_000.0
INPUT_ROWS = 256  # distinct request inputs cycled through (from a validation set)
LOAD_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 60.0
# A profile's measurement stops sending after this long (a slow model asked for many requests): the
# optimiser's one worker must come back to its queue; the result says how many were measured.
PROFILE_TIME_LIMIT_S = 300.0
# The formats the optimiser's private CPU Triton serves (ONNX through the appliance's ONNX Runtime model.py).
MEASURABLE = (ArtifactFormat.ONNX, ArtifactFormat.PYTHON)


class SearchError(DomainError):
    """A search that cannot be measured as asked."""


# --- The grid ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One point of the grid: the serving-profile fields a search varies."""

    max_batch_size: int
    instance_count: int
    max_queue_delay_us: int

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    def label(self) -> str:
        batch = f"batch ≤ {self.max_batch_size}, delay {self.max_queue_delay_us} µs" if self.batching else "no batching"
        return f"{batch}, {self.instance_count} instance{'s' if self.instance_count > 1 else ''}"


def normalise_grid(grid: Any) -> dict[str, list[int]]:
    """The grid as three sorted lists of distinct integers within GRID_LIMITS; refuses
    anything else with what is wrong."""
    if not isinstance(grid, Mapping) or set(grid) != set(GRID_LIMITS):
        raise SearchError(f"grid: an object with exactly the lists {', '.join(GRID_LIMITS)}")
    spec: dict[str, list[int]] = {}
    for name, (low, high) in GRID_LIMITS.items():
        values = grid[name]
        if (not isinstance(values, list) or not 1 <= len(values) <= GRID_MAX_VALUES
                or not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values)):  # fmt: skip
            raise SearchError(f"grid.{name}: 1 to {GRID_MAX_VALUES} integers from {low} to {high}")
        if len(set(values)) != len(values):
            raise SearchError(f"grid.{name} repeats a value")
        spec[name] = sorted(values)
    return spec


def expand(grid: Mapping[str, Sequence[int]], *, version_max_batch_size: int,
           concurrency: int) -> tuple[list[Candidate], list[str]]:  # fmt: skip
    """The profiles to measure, no-batching first, and why the rest of the grid is not.

    Pruned: batch sizes the version cannot take; batching at all at concurrency 1; of the
    batch sizes at least the concurrency, all but the smallest (a batch never holds more
    than the requests in flight, so they behave alike); likewise instance counts (the extra
    instances sit idle); queue delays without batching (nothing waits to be batched).
    Added: no batching (max batch size 1) when the grid lacks it, the baseline every search
    is compared with. A version without a batch dimension (max batch size 0) is measured
    with 0 and the instance counts only."""
    pruned: list[str] = []
    sizes = sorted(set(grid["max_batch_size"]))
    counts = sorted(set(grid["instance_count"]))
    delays = sorted(set(grid["max_queue_delay_us"]))
    if version_max_batch_size == 0:
        pruned.append("the version has no batch dimension (max batch size 0): measured unbatched, with each "
                      "instance count; batch sizes and queue delays do not apply")  # fmt: skip
        sizes = [0]
    else:
        over = [s for s in sizes if s > version_max_batch_size]
        if over:
            pruned.append(f"max batch size {_words(over)}: above what the version takes ({version_max_batch_size})")
        sizes = [s for s in sizes if s <= version_max_batch_size]
        if 1 not in sizes:
            pruned.append("added max batch size 1 (no batching): the baseline a search is compared with")
            sizes = [1, *sizes]
        batching = [s for s in sizes if s > 1]
        if concurrency == 1 and batching:
            pruned.append(f"max batch size {_words(batching)}: one request in flight never makes a batch")
            sizes = [1]
        else:
            enough = [s for s in batching if s >= concurrency]
            if len(enough) > 1:
                pruned.append(f"max batch size {_words(enough[1:])}: a batch never holds more than the {concurrency} "
                              f"requests in flight, so these behave as {enough[0]}")  # fmt: skip
                sizes = [s for s in sizes if s <= enough[0]]
    enough_counts = [n for n in counts if n >= concurrency]
    if len(enough_counts) > 1:
        pruned.append(f"instance count {_words(enough_counts[1:])}: with {concurrency} requests in flight, instances "
                      f"beyond {enough_counts[0]} sit idle")  # fmt: skip
        counts = [n for n in counts if n <= enough_counts[0]]
    if any(d > 0 for d in delays) and any(s <= 1 for s in sizes):
        pruned.append("queue delay without batching: nothing waits to be batched, so those profiles have none")
    candidates = [
        Candidate(size, count, delay)
        for size in sizes
        for count in counts
        for delay in (delays if size > 1 else [0])
    ]  # fmt: skip
    if len(candidates) > MAX_PROFILES:
        raise SearchError(f"the grid makes {len(candidates)} profiles after pruning; at most {MAX_PROFILES} "
                          "are measured in one search")  # fmt: skip
    return candidates, pruned


def _words(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values)


def serving_profile(candidate: Candidate, base: Mapping[str, Any]) -> dict[str, Any]:
    """The model's serving profile `base` with the candidate's fields: what is measured and
    what applying it saves. Preferred batch sizes above the batch size are dropped, and the
    warm-up batch shrinks to fit it; everything else stays as the operator set it."""
    profile = copy.deepcopy(dict(base))
    batch = candidate.max_batch_size
    profile["max_batch_size"] = batch
    dynamic = profile["dynamic_batching"]
    dynamic["enabled"] = candidate.batching
    dynamic["max_queue_delay_us"] = candidate.max_queue_delay_us if candidate.batching else 0
    dynamic["preferred_batch_sizes"] = [s for s in dynamic["preferred_batch_sizes"] if s <= batch]
    profile["instance_group"]["count"] = candidate.instance_count
    profile["warmup"]["batch_size"] = min(profile["warmup"]["batch_size"], max(batch, 1))
    return normalise(profile)


# --- The recommendation ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one profile measured (no numbers where it did not load or nothing succeeded)."""

    candidate: Candidate
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    errors: int = 0
    client_cpu_us: float | None = None
    seconds: float | None = None
    note: str = ""


def meets(outcome: Outcome, objective_p99_ms: float) -> bool:
    return (outcome.throughput is not None and outcome.p99_ms is not None and outcome.errors == 0
            and outcome.p99_ms <= objective_p99_ms)  # fmt: skip


def baseline_of(outcomes: Sequence[Outcome]) -> int | None:
    """The no-batching profile with the fewest instances that measured something."""
    unbatched = [i for i, o in enumerate(outcomes) if not o.candidate.batching and o.throughput]
    return min(unbatched, key=lambda i: outcomes[i].candidate.instance_count, default=None)


def recommend(outcomes: Sequence[Outcome], *, objective_p99_ms: float,
              concurrency: int) -> tuple[int | None, float | None, str]:  # fmt: skip
    """(the index of the recommended outcome, its throughput over the no-batching
    baseline's, why in words). The most throughput among the profiles that meet the
    objective with no failed request; a tie goes to the lower p99. None when none meets it."""
    met = [i for i, o in enumerate(outcomes) if meets(o, objective_p99_ms)]
    objective = f"p99 ≤ {objective_p99_ms:g} ms at concurrency {concurrency}"
    missed = len(outcomes) - len(met)
    if not met:
        measured = [o for o in outcomes if o.p99_ms is not None]
        if not measured:
            return None, None, f"No profile was measured ({objective}): nothing to apply."
        lowest = min(measured, key=lambda o: o.p99_ms or math.inf)
        return None, None, (f"No profile met {objective}: the lowest p99 was {lowest.p99_ms:.1f} ms "
                            f"({lowest.candidate.label()}, {lowest.throughput or 0:.0f} req/s). Raise the objective "
                            "or lower the concurrency; nothing to apply.")  # fmt: skip
    ranked = sorted(met, key=lambda i: (-(outcomes[i].throughput or 0.0), outcomes[i].p99_ms or math.inf))
    best = outcomes[ranked[0]]
    words = (f"{best.candidate.label()}: {best.throughput or 0:.0f} req/s at p99 {best.p99_ms or 0:.1f} ms, the most "
             f"throughput of the profiles that met {objective}.")  # fmt: skip
    base_index = baseline_of(outcomes)
    speed_up = None
    if base_index is not None:
        base = outcomes[base_index]
        speed_up = (best.throughput or 0.0) / (base.throughput or 1.0)
        verdict = "met the objective" if meets(base, objective_p99_ms) else "missed the objective"
        words += (f" {speed_up:.2f}× the no-batching baseline ({base.candidate.label()}: {base.throughput or 0:.0f} "
                  f"req/s at p99 {base.p99_ms or 0:.1f} ms, {verdict}).")  # fmt: skip
    if len(ranked) > 1:
        second = outcomes[ranked[1]]
        gap = 100.0 * ((second.throughput or 0.0) / (best.throughput or 1.0) - 1.0)
        words += f" Next: {second.candidate.label()}, {second.throughput or 0:.0f} req/s ({gap:+.0f} %)."
    if missed:
        words += f" {missed} of {len(outcomes)} profiles missed the objective."
    return ranked[0], speed_up, words


# --- What a search may measure ----------------------------------------------------------------


def _synthetic_possible(version: ModelVersion) -> bool:
    return all(t["datatype"] != "BYTES" and -1 not in t["dims"] for t in version.signature["inputs"])


def refusal(*, version: ModelVersion, node: Node, objective_p99_ms: float, concurrency: int, requests: int,
            input_set: ValidationSet | None) -> str:  # fmt: skip
    """Why this search cannot be measured as asked, or ''."""
    if not (isinstance(objective_p99_ms, int | float) and math.isfinite(objective_p99_ms)
            and 0 < objective_p99_ms <= OBJECTIVE_MAX_MS):  # fmt: skip
        return f"objective_p99_ms: a latency above 0 and at most {OBJECTIVE_MAX_MS:g} ms"
    if not CONCURRENCY_RANGE[0] <= concurrency <= CONCURRENCY_RANGE[1]:
        return f"concurrency: from {CONCURRENCY_RANGE[0]} to {CONCURRENCY_RANGE[1]}"
    if not REQUESTS_RANGE[0] <= requests <= REQUESTS_RANGE[1] or requests < concurrency:
        return f"requests: from {REQUESTS_RANGE[0]} to {REQUESTS_RANGE[1]}, and at least the concurrency"
    if version.format not in MEASURABLE:
        return (f"{version} is a {version.format} version: the optimiser measures on its CPU Triton, which serves "
                f"{' and '.join(str(f) for f in MEASURABLE)} versions")  # fmt: skip
    if version.decoupled:
        return f"{version} streams (decoupled): a search measures request-response serving with dynamic batching"
    if node.gpus.exists():
        return (f"node {node.name} has GPUs: its numbers can only be measured on its own GPUs, by a search task on a "
                "queue of that node's, which this appliance does not run yet; the optimiser measures CPU nodes")  # fmt: skip
    problem = runtimes.backend_refusal(version.format, node.backends)
    if problem:
        return f"node {node.name} cannot serve {version}: {problem}"
    if input_set is not None and input_set.model_id != version.model_id:
        return f"validation set '{input_set}' belongs to another model than {version}"
    if input_set is None and not version.sample_inputs and not _synthetic_possible(version):
        return (f"{version} has inputs of variable size and no stored samples: name one of the model's validation "
                "sets (input_set) whose inputs the requests carry")  # fmt: skip
    return ""


def request_rows(version: ModelVersion, set_inputs: Mapping[str, np.ndarray] | None) -> list[dict[str, np.ndarray]]:
    """The inputs of the requests a search sends, one row each (with the batch dimension of
    1 a batching version's requests carry): a validation set's rows, else the stored sample,
    else zeros."""
    from tritonclient.utils import triton_to_np_dtype

    batched = version.max_batch_size > 0
    tensors = version.signature["inputs"]
    if set_inputs is not None:
        count = min(len(next(iter(set_inputs.values()))), INPUT_ROWS)
        dtypes = {t["name"]: triton_to_np_dtype(t["datatype"]) for t in tensors}
        return [{name: np.ascontiguousarray(rows[i : i + 1] if batched else rows[i], dtype=dtypes[name])
                 for name, rows in set_inputs.items()} for i in range(count)]  # fmt: skip
    row = {}
    for tensor in tensors:
        dtype = triton_to_np_dtype(tensor["datatype"])
        if version.sample_inputs:
            value = np.asarray(version.sample_inputs[tensor["name"]], dtype=dtype).reshape(tensor["dims"])
        else:
            value = np.zeros(tensor["dims"], dtype=dtype)
        row[tensor["name"]] = value[np.newaxis] if batched else value
    return [row]


# --- The private Triton and the load ----------------------------------------------------------


def time_limit_cut(*, elapsed_s: float, limit_s: float, measured: int, total: int) -> str:
    """Why a search starts no more profiles ('' to go on): its time limit passed. The first
    profile (no batching, the baseline of every speed-up) is always measured."""
    if measured == 0 or elapsed_s < limit_s:
        return ""
    return (f"The search's time limit of {limit_s:g} s was reached after {measured} of {total} profiles "
            f"({elapsed_s:.0f} s): the rest were not measured.")  # fmt: skip


def scratch_root() -> Path:
    return settings.VAR_DIR / "profile-searches"


def scratch_ids() -> list[str]:
    """The searches that have a scratch directory here (running, or left behind)."""
    root = scratch_root()
    return sorted(entry.name for entry in root.iterdir()) if root.is_dir() else []


def sweep(ids: Collection[str]) -> None:
    """Removes what the searches `ids`, which no longer run, left behind (a worker killed
    mid-search): the processes of their Triton, whose command lines carry the search's
    shared-memory prefix (the server's own and its backend stubs'), and their scratch
    directories."""
    markers = [f"appliance-search-{search_id}-".encode() for search_id in ids]
    if not markers:
        return
    for process in living_processes():
        if any(marker in process.cmdline() for marker in markers):
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for search_id in ids:
        shutil.rmtree(scratch_root() / search_id, ignore_errors=True)


def host_description() -> str:
    return f"{host.machine()}: the optimiser's private Triton, stock gRPC client"


@dataclass
class Measurement:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    client_cpu_s: float = 0.0

    def outcome(self, candidate: Candidate, asked: int = 0) -> Outcome:
        done = len(self.latencies_ms) + len(self.errors)
        note = f"{len(self.errors)} failed: {self.errors[0]}" if self.errors else ""
        if done < asked:
            note = f"time limit ({PROFILE_TIME_LIMIT_S:g} s): {done} of {asked} requests measured" + (
                f"; {note}" if note else "")
        if not self.latencies_ms:
            return Outcome(candidate, errors=len(self.errors), seconds=self.seconds, note=note or "nothing measured")
        p50, p99 = (float(v) for v in np.percentile(self.latencies_ms, [50, 99]))
        return Outcome(candidate, p50_ms=p50, p99_ms=p99, throughput=len(self.latencies_ms) / self.seconds,
                       errors=len(self.errors), client_cpu_us=1e6 * self.client_cpu_s / max(done, 1),
                       seconds=self.seconds, note=note)  # fmt: skip


async def _drive(address: str, model: str, rows: list[list[Any]], *, concurrency: int, count: int,
                 limit_s: float = PROFILE_TIME_LIMIT_S) -> Measurement:  # fmt: skip
    """`count` requests from `concurrency` coroutines, each sending its next request as soon
    as its last one is answered (none sent after `limit_s`); latency per request as the
    client sees it."""
    from tritonclient.grpc import aio
    from tritonclient.utils import InferenceServerException

    result = Measurement()
    sent = 0
    client = aio.InferenceServerClient(address)
    deadline = time.perf_counter() + limit_s

    async def one_client() -> None:
        nonlocal sent
        while sent < count and time.perf_counter() < deadline:
            inputs = rows[sent % len(rows)]
            sent += 1
            start = time.perf_counter()
            try:
                await client.infer(model, inputs, client_timeout=REQUEST_TIMEOUT_S)
            except InferenceServerException as exc:
                result.errors.append(str(exc)[:200])
                continue
            result.latencies_ms.append(1000.0 * (time.perf_counter() - start))

    try:
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        result.seconds, result.client_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await client.close()
    return result


def infer_inputs(rows: list[dict[str, np.ndarray]], version: ModelVersion) -> list[list[Any]]:
    """tritonclient's inputs for each row, built once (a request only reads them)."""
    import tritonclient.grpc as grpcclient

    datatypes = {t["name"]: t["datatype"] for t in version.signature["inputs"]}
    built = []
    for row in rows:
        inputs = []
        for name, value in row.items():
            tensor = grpcclient.InferInput(name, list(value.shape), datatypes[name])
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        built.append(inputs)
    return built


@dataclass
class Bench:
    """A private tritonserver and a scratch repository holding one version, for as long as
    the `with` block lasts; both are gone after it, however it ends."""

    version: ModelVersion
    workdir: Path
    install: TritonInstall | None = None
    tree: ProcessTree | None = None
    address: str = ""

    def __post_init__(self) -> None:
        if self.install is None:
            try:
                self.install = TritonInstall.discover()
            except RuntimeError as exc:
                raise SearchError(f"no Triton found for the search: {exc}") from None

    @property
    def repository(self) -> Path:
        return self.workdir / "models"

    @property
    def backends(self) -> tuple[str, ...]:
        assert self.install is not None
        return installed_backends(self.install.backend_dir)

    def server(self, ports: Sequence[int]) -> TritonSupervisor:
        """The nodes' command line and environment for this scratch repository and ports (its
        own Python-backend shared-memory prefix)."""
        assert self.install is not None
        http, grpc, metrics = ports
        return TritonSupervisor(node_name=f"search-{self.workdir.name}", repository=self.repository,
                                ports=TritonPorts(http=http, grpc=grpc, metrics=metrics),
                                log_path=self.workdir / "triton.log", install=self.install)  # fmt: skip

    def __enter__(self) -> Bench:
        shutil.rmtree(self.workdir, ignore_errors=True)
        try:
            self._materialise()
            ports = free_ports(3)
            self.address = f"127.0.0.1:{ports[1]}"
            server = self.server(ports)
            self.tree = ProcessTree(name="tritonserver of a profile search", argv=server.command(),
                                    env=server.environment(), log_path=self.workdir / "triton.log")  # fmt: skip
            if not self.tree.start_ready(lambda: triton_ready(self.address), timeout=60):
                raise SearchError(f"the search's tritonserver did not start: {self.log_tail()}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.tree is not None:
            self.tree.stop(timeout=15)
            self.tree = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return (self.workdir / "triton.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def _materialise(self) -> None:
        """The version's directory, as a node agent writes it for a Triton with these backends
        (the appliance's ONNX Runtime model.py beside model.onnx where ONNX goes through the
        Python backend)."""
        target = self.repository / self.version.model.name / str(self.version.number)
        unpack_into(artifact_read_verified(self.version.artifact_sha256), self.version.format, target)
        if runtimes.wraps_onnx_in_python(self.version.format, self.backends):
            shutil.copyfile(runtimes.ONNX_RUNNER, target / "model.py")  # what the agents write there

    def measure(self, candidate: Candidate, profile: Mapping[str, Any], rows: list[dict[str, np.ndarray]], *,
                concurrency: int, requests: int) -> Outcome:  # fmt: skip
        """Loads the version under `profile` (Triton's response cache off: the requests repeat),
        warms it up at the same concurrency, measures `requests`, and unloads it."""
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        name = self.version.model.name
        served = {**profile, "response_cache": False}
        model_dir = self.repository / name
        for file_name, data in warmup_files(self.version, served).items():
            (model_dir / WARMUP_DIR).mkdir(exist_ok=True)
            (model_dir / WARMUP_DIR / file_name).write_bytes(data)
        (model_dir / "config.pbtxt").write_text(render_config(self.version, versions=[self.version.number],
                                                              profile=served, backends=self.backends))  # fmt: skip
        client = grpcclient.InferenceServerClient(self.address)
        try:
            try:
                client.load_model(name, client_timeout=LOAD_TIMEOUT_S)
            except InferenceServerException as exc:
                if self.tree is None or not self.tree.alive():
                    raise SearchError(f"the search's tritonserver died: {self.log_tail()}") from None
                return Outcome(candidate, note=f"did not load: {exc}")
            inputs = infer_inputs(rows, self.version)
            warmup = min(requests, max(2 * concurrency, requests // 10))
            asyncio.run(_drive(self.address, name, inputs, concurrency=concurrency, count=warmup))
            measured = asyncio.run(_drive(self.address, name, inputs, concurrency=concurrency, count=requests))
            return measured.outcome(candidate, asked=requests)
        finally:
            self._unload(client, name)
            client.close()

    def _unload(self, client: Any, name: str) -> None:
        """Unloads and waits until its instances are gone, so the next profile has the CPU."""
        try:
            client.unload_model(name)
        except Exception:
            return

        def gone() -> bool:
            index = client.get_model_repository_index(as_json=True).get("models", [])
            return all(m.get("state") != "READY" and m.get("state") != "UNLOADING" for m in index if m["name"] == name)

        wait_until(gone, timeout=60, interval=0.1)

