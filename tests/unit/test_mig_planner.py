"""MIG planner against NVIDIA's documented combinations (MIG User Guide), the
fragmentation example, the exact command-line contract, and mig-parted files."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.nodes.mig.catalog import GPU_MODELS, GpuModel, Profile, gpu_model, model_for
from appliance.nodes.mig.migparted import MigConfigError, export_config, import_configs
from appliance.nodes.mig.planner import Placement, plan, valid_placements

ROOT = Path(__file__).resolve().parents[2]

VALID = [
    ("A100-40GB", ["7g.40gb"]),
    ("A100-40GB", ["4g.20gb", "2g.10gb", "1g.5gb"]),
    ("A100-40GB", ["3g.20gb", "3g.20gb"]),
    ("A100-40GB", ["2g.10gb", "2g.10gb", "2g.10gb", "1g.5gb"]),
    ("A100-40GB", ["1g.5gb"] * 7),
    ("A100-40GB", ["1g.10gb"] * 4),
    ("A100-40GB", ["1g.5gb+me", "1g.5gb", "2g.10gb", "3g.20gb"]),
    ("H100-80GB", ["3g.40gb", "2g.20gb", "1g.10gb"]),
    ("H100-80GB", ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]),
    ("H100-80GB", ["4g.40gb", "3g.40gb"]),
    ("H100-80GB", ["1g.20gb"] * 4),
    ("H100-80GB", ["1g.10gb"] * 6 + ["1g.20gb"]),
    ("A30-24GB", ["4g.24gb"]),
    ("A30-24GB", ["2g.12gb", "2g.12gb"]),
    ("A30-24GB", ["2g.12gb", "1g.6gb", "1g.6gb"]),
    ("A30-24GB", ["1g.6gb"] * 4),
    ("A30-24GB", ["2g.12gb+me", "1g.6gb", "1g.6gb"]),
]

INVALID = [
    ("A100-40GB", ["4g.20gb", "4g.20gb"], "allows at most 1"),
    ("A100-40GB", ["3g.20gb", "3g.20gb", "1g.5gb"], "memory slices"),
    ("A100-40GB", ["7g.40gb", "1g.5gb"], "compute slices"),
    ("A100-40GB", ["1g.5gb"] * 8, "allows at most 7"),
    ("A100-40GB", ["1g.5gb+me", "1g.5gb+me"], "allows at most 1"),
    ("A100-40GB", ["1g.40gb"], "not a MIG profile of A100-40GB"),
    ("H100-80GB", ["4g.40gb", "2g.20gb", "2g.20gb"], "compute slices"),
    ("H100-80GB", ["3g.40gb", "3g.40gb", "3g.40gb"], "allows at most 2"),
    ("H100-80GB", ["1g.20gb"] * 4 + ["1g.10gb"], "memory slices"),
    ("A30-24GB", ["4g.24gb", "1g.6gb"], "compute slices"),
    ("A30-24GB", ["2g.12gb"] * 3, "allows at most 2"),
    ("A30-24GB", ["1g.6gb+me", "2g.12gb+me"], "media extensions"),
    ("A30-24GB", ["1g.6gb"] * 5, "allows at most 4"),
]


def _check_geometry(gpu: GpuModel, placements: tuple[Placement, ...]) -> None:
    used: set[int] = set()
    for p in placements:
        assert p.start in gpu.profile(p.profile).starts  # type: ignore[union-attr]
        assert not used & set(p.slices), f"{p} overlaps"
        used |= set(p.slices)
    assert max(used) < gpu.memory_slices


@pytest.mark.parametrize(("model", "layout"), VALID, ids=[f"{m}:{'+'.join(layout)}" for m, layout in VALID])
def test_documented_valid_layouts_get_explicit_placements(model: str, layout: list[str]) -> None:
    result = plan(gpu_model(model), layout)
    assert result.ok, result.reason
    assert [p.profile for p in result.placements] == layout
    _check_geometry(gpu_model(model), result.placements)


@pytest.mark.parametrize(("model", "layout", "why"), INVALID, ids=[f"{m}:{'+'.join(layout)}" for m, layout, _ in INVALID])
def test_documented_invalid_layouts_are_refused_with_the_reason(model: str, layout: list[str], why: str) -> None:
    result = plan(gpu_model(model), layout)
    assert not result.ok
    assert why in result.reason


def test_fragmentation_example_is_placed_so_it_fits() -> None:
    """MIG guide: `-cgi 19,19,14,9` (1g,1g,2g,3g) fails with driver-chosen placement
    unless 3g comes first; explicit placement puts 3g at 4 and the rest below."""
    result = plan(gpu_model("A100-40GB"), ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"])
    assert result.ok
    assert [str(p) for p in result.placements] == ["1g.5gb@2", "1g.5gb@3", "2g.10gb@0", "3g.20gb@4"]


def test_a_pure_placement_conflict_names_the_instances() -> None:
    gpu = GpuModel("TEST", 8, 7, (Profile("2g.x", 1, 2, 4, (0, 2), 1.0, None, 2), Profile("1g.x", 2, 1, 2, (1,), 1.0, None, 1)))
    result = plan(gpu, ["2g.x", "1g.x"])
    assert not result.ok
    assert "always overlap" in result.reason and "2g.x (starts {0,2}" in result.reason and "1g.x (starts {1}" in result.reason


def test_valid_placements_beside_existing_instances() -> None:
    gpu = gpu_model("H100-80GB")
    assert valid_placements(gpu, "3g.40gb", [Placement("3g.40gb", 0, 4)]) == [4]
    assert valid_placements(gpu, "1g.20gb", [Placement("3g.40gb", 4, 4)]) == [0, 2]


def test_catalog_covers_the_seven_models_consistently() -> None:
    assert set(GPU_MODELS) == {"A100-40GB", "A100-80GB", "A30-24GB", "H100-80GB", "H100-94GB", "H200-141GB", "B200-180GB"}
    for gpu in GPU_MODELS.values():
        for profile in gpu.profiles:
            assert all(s + profile.memory_slices <= gpu.memory_slices for s in profile.starts), profile
        assert plan(gpu, [gpu.profiles[-1].name]).ok  # the whole GPU
    assert model_for("NVIDIA H100 80GB HBM3", 81559) == "H100-80GB"
    assert model_for("NVIDIA A100-SXM4-40GB", 40960) == "A100-40GB"
    assert model_for("Tesla T4", 15360) is None


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", "mig_plan", *args], cwd=ROOT, capture_output=True, text=True)


def test_command_line_prints_placements_and_exits_0() -> None:
    result = _cli("--gpu-model", "H100-80GB", "3g.40gb", "2g.20gb", "1g.10gb")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["3g.40gb@0", "2g.20gb@4", "1g.10gb@6"]


def test_command_line_prints_the_reason_and_exits_1() -> None:
    result = _cli("--gpu-model", "H100-80GB", "4g.40gb", "4g.40gb")
    assert result.returncode == 1
    assert result.stdout.strip() == "2 × 4g.40gb requested; H100-80GB allows at most 1"
    assert _cli("--gpu-model", "V100", "1g.5gb").returncode != 0


MIG_PARTED = """
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  all-balanced:
    - device-filter: ["0x233010DE", "0x233110DE"]
      devices: all
      mig-enabled: true
      mig-devices:
        "1g.10gb": 2
        "2g.20gb": 1
        "3g.40gb": 1
  custom:
    - devices: [0]
      mig-enabled: true
      mig-devices:
        "7g.80gb": 1
"""


def test_mig_parted_import_expands_and_plans() -> None:
    configs = import_configs(MIG_PARTED)
    balanced = configs["all-balanced"][0]
    assert balanced.layout == ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb")
    assert balanced.device_filter == ("0x233010DE", "0x233110DE")
    assert balanced.applies_to(5) and configs["custom"][0].applies_to(0) and not configs["custom"][0].applies_to(1)
    assert plan(gpu_model("H100-80GB"), list(balanced.layout)).ok
    assert configs["all-disabled"][0].layout == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: v2\nmig-configs: {a: [{devices: all, mig-enabled: false}]}", "version: v1"),
        ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true}]}", "mig-devices is required"),
        ("version: v1\nmig-configs: {a: [{devices: some, mig-enabled: false}]}", "devices must be"),
        ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: false, extra: 1}]}", "unknown keys"),
        ("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true, mig-devices: {1g.10gb: -1}}]}", "non-negative"),
        ("version: v1\nmig-configs: [", "not valid YAML"),
    ],
)
def test_mig_parted_import_refuses_malformed_files(text: str, message: str) -> None:
    with pytest.raises(MigConfigError, match=message):
        import_configs(text)


def test_mig_parted_export_round_trips() -> None:
    text = export_config("appliance", {0: ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"], 1: ["7g.80gb"], 2: []})
    back = import_configs(text)["appliance"]
    assert [(s.devices, s.mig_enabled, s.layout) for s in back] == [
        ((0,), True, ("3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb")),
        ((1,), True, ("7g.80gb",)),
        ((2,), False, ()),
    ]
    assert io.StringIO(text).read().startswith("version: v1")
