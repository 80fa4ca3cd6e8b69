"""Health evaluation: thresholds, XIDs, fail-closed read-outs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from appliance.nodes.health import GpuFacts, NodeFacts, Thresholds, evaluate

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LIMITS = Thresholds()


def _node(**gpu: object) -> NodeFacts:
    facts = GpuFacts(0, temperature_c=50, ecc_corrected=0, ecc_uncorrected=0, readout_time=NOW)
    for name, value in gpu.items():
        setattr(facts, name, value)
    return NodeFacts("n", NOW, NOW, True, "", gpus=[facts])


def _xid(xid: int, age_s: int = 5) -> list[dict[str, object]]:
    return [{"xid": xid, "time": (NOW - timedelta(seconds=age_s)).isoformat()}]


@pytest.mark.parametrize(
    ("signals", "health", "reason"),
    [
        ({}, "healthy", None),
        ({"temperature_c": 86}, "degraded", "temperature 86 °C ≥ 85 °C"),
        ({"temperature_c": 97}, "unhealthy", "temperature 97 °C ≥ 95 °C"),
        ({"ecc_uncorrected": 2}, "unhealthy", "2 uncorrectable ECC errors"),
        ({"ecc_corrected": 5000}, "degraded", "5000 corrected ECC errors"),
        ({"xid_events": _xid(79)}, "unhealthy", "XID 79"),
        ({"xid_events": _xid(119)}, "unhealthy", "XID 119"),
        ({"xid_events": _xid(13)}, "degraded", "XID 13"),
        ({"xid_events": _xid(79, age_s=3600)}, "healthy", None),
        ({"throttle_reasons": ["HwThermalSlowdown", "GpuIdle"]}, "degraded", "HwThermalSlowdown"),
        ({"throttle_reasons": ["GpuIdle", "SwPowerCap"]}, "healthy", None),
        ({"remapped_rows_pending": True}, "degraded", "remapped rows pending"),
        ({"ecc_uncorrected_aggregate": 3}, "degraded", "3 uncorrectable ECC errors in its lifetime"),
        ({"retired_pages_pending": True}, "degraded", "retired pages pending a reset"),
        ({"remap_failed": True}, "unhealthy", "row remapping failed"),
        ({"readout_error": "GPU is lost"}, "unhealthy", "read-out failed (GPU is lost)"),
        ({"readout_time": None}, "unhealthy", "no recent health read-out"),
        ({"readout_time": NOW - timedelta(seconds=60)}, "unhealthy", "no recent health read-out"),
    ],
)
def test_gpu_signals(signals: dict[str, object], health: str, reason: str | None) -> None:
    verdict, reasons = evaluate(_node(**signals), LIMITS)
    assert verdict == health
    if reason:
        assert any(reason in r for r in reasons), reasons
    else:
        assert reasons == []


def test_checks_that_cannot_run_fail_closed() -> None:
    silent = NodeFacts("n", NOW, NOW - timedelta(seconds=30), True, "")
    assert evaluate(silent, LIMITS)[0] == "unhealthy"
    never = NodeFacts("n", NOW, None, False, "")
    assert "never reported" in evaluate(never, LIMITS)[1][0]
    hung = NodeFacts("n", NOW, NOW, True, "Deadline Exceeded")
    verdict, reasons = evaluate(hung, LIMITS)
    assert verdict == "unhealthy" and "Triton did not answer the control plane: Deadline Exceeded" in reasons
    agent_says_no = NodeFacts("n", NOW, NOW, False, "")
    assert evaluate(agent_says_no, LIMITS)[0] == "unhealthy"


def test_a_model_that_is_not_ready_degrades_the_node() -> None:
    facts = NodeFacts("n", NOW, NOW, True, "", models_not_ready=["digits:3"])
    assert evaluate(facts, LIMITS) == ("degraded", ["model digits:3 is not ready"])


def test_simulated_signals_reach_the_readout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from appliance.nodes.inventory.simulated import SimulatedInventory

    sim = SimulatedInventory(state_path=tmp_path / "g.json", models=("H100-80GB",))
    assert sim.health()[0].temperature_c == 45 and sim.health()[0].readout_error == ""
    sim.inject(0, xid=79, temperature_c=91)
    reading = sim.health()[0]
    assert reading.temperature_c == 91 and reading.xid_events[0]["xid"] == 79
    sim.inject(0, fail_readout=True)
    assert "GPU is lost" in sim.health()[0].readout_error
    sim.inject(0, clear=True)
    assert sim.health()[0].xid_events == []
    with pytest.raises(ValueError, match="unknown health signals"):
        sim.inject(0, fan_rpm=0)
