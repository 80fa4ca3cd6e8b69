"""Profile search, the parts that need no Triton: the grid and its pruning, each profile
as the model's serving profile with the grid's fields changed, the request inputs, the
numbers of one measurement, and the recommendation's arithmetic; and the private Triton's
install and command line held equal to the node agent's (profiles.py restates them, since
the control plane does not import the agent)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.profile import check_against, normalise
from appliance.optimisation import profiles
from appliance.optimisation.profiles import Candidate, Outcome, SearchError, expand, recommend

SIGNATURE = {"inputs": [{"name": "IMAGE", "datatype": "FP32", "dims": [64]}],
             "outputs": [{"name": "LABEL", "datatype": "INT32", "dims": [1]}]}  # fmt: skip


def _version(max_batch_size: int = 64, profile: dict[str, Any] | None = None, **fields: Any) -> ModelVersion:
    values: dict[str, Any] = {"number": 1, "format": "onnx", "signature": SIGNATURE, "max_batch_size": max_batch_size,
                              "artifact_sha256": "0" * 64, "artifact_size": 1}  # fmt: skip
    values.update(fields)
    return ModelVersion(model=Model(name="m", serving_profile=profile or {}), **values)


# --- the grid --------------------------------------------------------------------------------


def test_the_default_grid_at_concurrency_32_is_ten_profiles_no_batching_first() -> None:
    candidates, pruned = expand(profiles.DEFAULT_GRID, version_max_batch_size=64, concurrency=32)
    assert candidates[:2] == [Candidate(1, 1, 0), Candidate(1, 2, 0)]
    assert len(candidates) == 10 and len(set(candidates)) == 10
    assert {c.max_batch_size for c in candidates[2:]} == {8, 32}
    assert {(c.instance_count, c.max_queue_delay_us) for c in candidates[2:]} == {(1, 0), (1, 2000), (2, 0), (2, 2000)}
    assert pruned == ["queue delay without batching: nothing waits to be batched, so those profiles have none"]


@pytest.mark.parametrize("bad, words", [
    ({"max_batch_size": [8], "instance_count": [1]}, "exactly the lists"),
    ({**profiles.DEFAULT_GRID, "max_batch_size": []}, "grid.max_batch_size: 1 to 6 integers"),
    ({**profiles.DEFAULT_GRID, "max_batch_size": [0, 8]}, "from 1 to 1024"),
    ({**profiles.DEFAULT_GRID, "instance_count": [True]}, "grid.instance_count"),
    ({**profiles.DEFAULT_GRID, "max_queue_delay_us": [0, 1, 2, 3, 4, 5, 6]}, "1 to 6 integers"),
    ({**profiles.DEFAULT_GRID, "max_queue_delay_us": [100, 100]}, "repeats a value"),
    ([1, 8, 32], "exactly the lists"),
])  # fmt: skip
def test_a_malformed_grid_is_refused_with_what_is_wrong(bad: Any, words: str) -> None:
    with pytest.raises(SearchError, match=words):
        profiles.normalise_grid(bad)


def test_a_grid_is_normalised_sorted() -> None:
    grid = {"max_batch_size": [32, 8], "instance_count": [2, 1], "max_queue_delay_us": [500, 0]}
    assert profiles.normalise_grid(grid) == {"max_batch_size": [8, 32], "instance_count": [1, 2],
                                             "max_queue_delay_us": [0, 500]}  # fmt: skip


def test_batch_sizes_the_version_cannot_take_are_pruned_and_no_batching_is_always_there() -> None:
    grid = {"max_batch_size": [8, 32], "instance_count": [1], "max_queue_delay_us": [0]}
    candidates, pruned = expand(grid, version_max_batch_size=16, concurrency=32)
    assert candidates == [Candidate(1, 1, 0), Candidate(8, 1, 0)]
    assert "max batch size 32: above what the version takes (16)" in pruned
    assert any(line.startswith("added max batch size 1 (no batching)") for line in pruned)


def test_sizes_and_instances_beyond_the_concurrency_behave_alike_and_only_the_smallest_stays() -> None:
    grid = {"max_batch_size": [1, 4, 8, 32], "instance_count": [1, 2, 4, 8], "max_queue_delay_us": [0]}
    candidates, pruned = expand(grid, version_max_batch_size=64, concurrency=4)
    assert {c.max_batch_size for c in candidates} == {1, 4}
    assert {c.instance_count for c in candidates} == {1, 2, 4}
    assert "max batch size 8, 32: a batch never holds more than the 4 requests in flight, so these behave as 4" in pruned
    assert "instance count 8: with 4 requests in flight, instances beyond 4 sit idle" in pruned


def test_at_concurrency_one_nothing_batches() -> None:
    candidates, pruned = expand(profiles.DEFAULT_GRID, version_max_batch_size=64, concurrency=1)
    assert candidates == [Candidate(1, 1, 0)]
    assert "max batch size 8, 32: one request in flight never makes a batch" in pruned
    assert "instance count 2: with 1 requests in flight, instances beyond 1 sit idle" in pruned


def test_a_version_without_a_batch_dimension_varies_only_its_instances() -> None:
    candidates, pruned = expand(profiles.DEFAULT_GRID, version_max_batch_size=0, concurrency=32)
    assert candidates == [Candidate(0, 1, 0), Candidate(0, 2, 0)]
    assert pruned[0].startswith("the version has no batch dimension")


def test_a_grid_too_large_after_pruning_is_refused() -> None:
    grid = {"max_batch_size": [1, 2, 4, 8, 16, 32], "instance_count": [1, 2, 3], "max_queue_delay_us": [0, 100, 1000]}
    with pytest.raises(SearchError, match=r"makes 48 profiles after pruning; at most 24"):
        expand(grid, version_max_batch_size=64, concurrency=32)


# --- each profile as a serving profile ----------------------------------------------------------


def test_a_candidate_changes_only_the_grid_fields_of_the_models_profile() -> None:
    base = normalise({"dynamic_batching": {"preferred_batch_sizes": [4, 16], "priority_levels": 2,
                                           "default_priority_level": 1},
                      "warmup": {"source": "zero", "batch_size": 16}, "onnx_threads": 2, "response_cache": True})  # fmt: skip
    version = _version()
    batched = profiles.serving_profile(Candidate(8, 2, 2000), base)
    assert batched["max_batch_size"] == 8 and batched["instance_group"]["count"] == 2
    dynamic = batched["dynamic_batching"]
    assert (dynamic["enabled"], dynamic["max_queue_delay_us"], dynamic["preferred_batch_sizes"]) == (True, 2000, [4])
    assert (dynamic["priority_levels"], batched["onnx_threads"], batched["response_cache"]) == (2, 2, True)
    assert batched["warmup"] == {"source": "zero", "batch_size": 8, "count": 1}
    plain = profiles.serving_profile(Candidate(1, 1, 0), base)
    assert (plain["max_batch_size"], plain["dynamic_batching"]["enabled"], plain["warmup"]["batch_size"]) == (1, False, 1)
    for profile in (batched, plain):
        check_against(version, profile)  # a version that takes 64 can be served with either
    assert base["dynamic_batching"]["preferred_batch_sizes"] == [4, 16], "the model's own profile is not changed"


# --- the requests' inputs ------------------------------------------------------------------------


def test_requests_carry_a_sets_rows_or_the_sample_or_zeros_with_the_batch_dimension() -> None:
    rows = np.arange(300 * 64, dtype=np.float64).reshape(300, 64)
    from_set = profiles.request_rows(_version(), {"IMAGE": rows})
    assert len(from_set) == profiles.INPUT_ROWS
    assert from_set[3]["IMAGE"].shape == (1, 64) and from_set[3]["IMAGE"].dtype == np.float32
    assert from_set[3]["IMAGE"][0, 0] == 3 * 64
    sample = profiles.request_rows(_version(sample_inputs={"IMAGE": list(range(64))}), None)
    assert len(sample) == 1 and sample[0]["IMAGE"].tolist() == [list(map(float, range(64)))]
    zeros = profiles.request_rows(_version(max_batch_size=0), None)
    assert zeros[0]["IMAGE"].shape == (64,) and not zeros[0]["IMAGE"].any()


# --- one measurement's numbers --------------------------------------------------------------------


def test_a_measurement_gives_percentiles_throughput_and_the_clients_cost_per_request() -> None:
    measured = profiles.Measurement(latencies_ms=[float(v) for v in range(1, 101)], errors=["x", "y"], seconds=2.0,
                                    client_cpu_s=0.051)  # fmt: skip
    outcome = measured.outcome(Candidate(8, 1, 0))
    assert outcome.p50_ms == pytest.approx(50.5) and outcome.p99_ms == pytest.approx(99.01)
    assert outcome.throughput == pytest.approx(50.0), "successful requests per second"
    assert outcome.client_cpu_us == pytest.approx(500.0), "CPU over every request sent, failed ones included"
    assert outcome.errors == 2 and outcome.note.startswith("2 failed: x")
    nothing = profiles.Measurement(errors=["refused"], seconds=1.0).outcome(Candidate(8, 1, 0))
    assert (nothing.throughput, nothing.p99_ms, nothing.errors) == (None, None, 1)


# --- the recommendation -------------------------------------------------------------------------


def _outcome(batch: int, instances: int, throughput: float, p99: float, *, delay: int = 0, errors: int = 0) -> Outcome:
    return Outcome(Candidate(batch, instances, delay), p50_ms=p99 / 2, p99_ms=p99, throughput=throughput, errors=errors)


def test_the_most_throughput_that_meets_the_objective_wins_and_its_ratio_is_to_no_batching() -> None:
    outcomes = [
        _outcome(1, 1, 100.0, 400.0),   # the baseline, misses the objective
        _outcome(1, 2, 150.0, 250.0),
        _outcome(8, 1, 330.0, 90.0),
        _outcome(32, 2, 500.0, 140.0),  # most throughput, but misses
        _outcome(32, 1, 420.0, 99.0, delay=2000),
        _outcome(8, 2, 450.0, 80.0, errors=1),  # one failed request disqualifies
    ]  # fmt: skip
    best, speed_up, why = recommend(outcomes, objective_p99_ms=100.0, concurrency=32)
    assert best == 4 and speed_up == pytest.approx(4.2)
    assert why.startswith("batch ≤ 32, delay 2000 µs, 1 instance: 420 req/s at p99 99.0 ms")
    assert "4.20× the no-batching baseline (no batching, 1 instance: 100 req/s at p99 400.0 ms, missed" in why
    assert "Next: batch ≤ 8, delay 0 µs, 1 instance, 330 req/s (-21 %)" in why
    assert "4 of 6 profiles missed the objective" in why


def test_a_tie_in_throughput_goes_to_the_lower_p99() -> None:
    outcomes = [_outcome(1, 1, 100.0, 50.0), _outcome(8, 1, 300.0, 40.0), _outcome(32, 1, 300.0, 30.0)]
    assert recommend(outcomes, objective_p99_ms=60.0, concurrency=8)[0] == 2


def test_no_recommendation_when_nothing_meets_the_objective() -> None:
    outcomes = [_outcome(1, 1, 100.0, 400.0), _outcome(8, 1, 300.0, 120.0), Outcome(Candidate(32, 1, 0), note="x")]
    best, speed_up, why = recommend(outcomes, objective_p99_ms=100.0, concurrency=32)
    assert (best, speed_up) == (None, None)
    assert why.startswith("No profile met p99 ≤ 100 ms at concurrency 32: the lowest p99 was 120.0 ms (batch ≤ 8")
    assert recommend([Outcome(Candidate(1, 1, 0), note="did not load")], objective_p99_ms=1.0, concurrency=1)[0] is None


def test_the_baseline_is_the_no_batching_profile_with_the_fewest_instances_that_measured() -> None:
    outcomes = [Outcome(Candidate(1, 1, 0), note="did not load"), _outcome(1, 2, 80.0, 30.0), _outcome(8, 1, 240.0, 20.0)]
    assert profiles.baseline_of(outcomes) == 1
    assert recommend(outcomes, objective_p99_ms=50.0, concurrency=8)[1] == pytest.approx(3.0)
    assert profiles.baseline_of([_outcome(8, 1, 240.0, 20.0)]) is None


# --- the private Triton is the nodes' ---------------------------------------------------------------


def test_the_private_triton_runs_the_nodes_command_line_on_its_own_repository_and_shared_memory() -> None:
    from appliance.core.tritonserver import TritonInstall

    install = TritonInstall.discover()
    bench = profiles.Bench(version=_version(), workdir=profiles.Path("/w/s"), install=install)
    argv = bench.server([1, 2, 3]).command()
    assert argv[0] == str(install.binary)
    assert "--model-repository=/w/s/models" in argv and "--model-control-mode=explicit" in argv
    assert "--backend-config=python,shm-region-prefix-name=appliance-search-s--" in argv  # not a node's
    assert {"--http-port=1", "--grpc-port=2", "--metrics-port=3"} <= set(argv)
    assert bench.backends == ("python",)  # the CPU Triton here

def test_a_measurement_cut_short_by_the_time_limit_says_how_much_it_measured() -> None:
    measured = profiles.Measurement(latencies_ms=[10.0] * 40, seconds=2.0)
    assert measured.outcome(Candidate(1, 1, 0), asked=40).note == ""
    note = measured.outcome(Candidate(1, 1, 0), asked=1000).note
    assert note == f"time limit ({profiles.PROFILE_TIME_LIMIT_S:g} s): 40 of 1000 requests measured"


# --- what a killed worker's search left behind ------------------------------------------------------


def test_sweep_removes_the_processes_and_directories_of_the_searches_named(tmp_path: Any, settings: Any) -> None:
    import subprocess
    import sys

    settings.VAR_DIR = tmp_path
    root = profiles.scratch_root()
    assert profiles.scratch_ids() == []
    (root / "dead" / "models").mkdir(parents=True)
    (root / "alive").mkdir()
    assert profiles.scratch_ids() == ["alive", "dead"]
    # Stand-ins for a dead search's Triton and a running one's: processes whose command line carries the prefix.
    code = "import time; time.sleep(60)"
    dead = subprocess.Popen([sys.executable, "-c", code, "--backend-config=python,shm-region-prefix-name=appliance-search-dead-"])
    alive = subprocess.Popen([sys.executable, "-c", code, "appliance-search-alive-x"])
    try:
        profiles.sweep(["dead"])
        assert dead.wait(timeout=10) == -9 and alive.poll() is None
        assert profiles.scratch_ids() == ["alive"]
    finally:
        for process in (dead, alive):
            process.kill()
            process.wait()


def test_a_search_starts_no_profile_past_its_time_limit_but_always_measures_the_first() -> None:
    assert profiles.time_limit_cut(elapsed_s=5000, limit_s=60, measured=0, total=10) == ""  # the baseline
    assert profiles.time_limit_cut(elapsed_s=59.9, limit_s=60, measured=3, total=10) == ""
    assert profiles.time_limit_cut(elapsed_s=61.4, limit_s=60, measured=3, total=10) == (
        "The search's time limit of 60 s was reached after 3 of 10 profiles (61 s): the rest were not measured.")
