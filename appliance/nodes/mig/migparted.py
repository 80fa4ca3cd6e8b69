"""Import and export of NVIDIA mig-parted `mig-configs` files (version v1).

    version: v1
    mig-configs:
      all-balanced:
        - devices: all            # or a list of GPU indices
          mig-enabled: true
          mig-devices: {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}

A layout here is a list of profile names per GPU index; `import_configs` expands
counts and `export_config` folds them back. Unknown keys are refused, as
mig-parted refuses them. Device filters are carried through untouched.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from appliance.core.errors import DomainError

_SPEC_KEYS = {"device-filter", "devices", "mig-enabled", "mig-devices"}


class MigConfigError(DomainError):
    """The mig-configs document is malformed."""


@dataclass(frozen=True)
class MigConfigSpec:
    devices: str | tuple[int, ...]  # "all" or GPU indices
    mig_enabled: bool
    layout: tuple[str, ...]  # profile names, counts expanded, largest first
    device_filter: tuple[str, ...] = field(default_factory=tuple)

    def applies_to(self, index: int) -> bool:
        return self.devices == "all" or index in self.devices


def _expand(devices: dict[str, int]) -> tuple[str, ...]:
    items: list[str] = []
    for name, count in devices.items():
        items.extend([name] * count)
    return tuple(sorted(items, key=lambda n: (-int(n.split("g.")[0].split(".")[-1]), n)))


def _spec(raw: Any, where: str) -> MigConfigSpec:
    if not isinstance(raw, dict):
        raise MigConfigError(f"{where}: expected a mapping")
    unknown = set(raw) - _SPEC_KEYS
    if unknown:
        raise MigConfigError(f"{where}: unknown keys {sorted(unknown)}")
    devices = raw.get("devices")
    if devices == "all":
        parsed_devices: str | tuple[int, ...] = "all"
    elif isinstance(devices, list) and devices and all(isinstance(d, int) and d >= 0 for d in devices):
        parsed_devices = tuple(devices)
    else:
        raise MigConfigError(f"{where}: devices must be 'all' or a list of GPU indices")
    enabled = raw.get("mig-enabled")
    if not isinstance(enabled, bool):
        raise MigConfigError(f"{where}: mig-enabled must be true or false")
    mig_devices = raw.get("mig-devices", {} if not enabled else None)
    if enabled and not isinstance(mig_devices, dict):
        raise MigConfigError(f"{where}: mig-devices is required when mig-enabled is true")
    if not enabled and mig_devices:
        raise MigConfigError(f"{where}: mig-devices must be empty when mig-enabled is false")
    for name, count in (mig_devices or {}).items():
        if not isinstance(name, str) or "g." not in name:
            raise MigConfigError(f"{where}: {name!r} is not a MIG profile name")
        if not isinstance(count, int) or count < 0:
            raise MigConfigError(f"{where}: count of {name} must be a non-negative integer")
    if enabled and mig_devices and not any(mig_devices.values()):
        raise MigConfigError(f"{where}: every count is 0")
    device_filter = raw.get("device-filter", ())
    if isinstance(device_filter, str):
        device_filter = (device_filter,)
    return MigConfigSpec(parsed_devices, enabled, _expand(mig_devices or {}), tuple(device_filter))


def import_configs(text: str) -> dict[str, list[MigConfigSpec]]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MigConfigError(f"not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or document.get("version") != "v1":
        raise MigConfigError("expected a document with version: v1")
    unknown = set(document) - {"version", "mig-configs"}
    if unknown:
        raise MigConfigError(f"unknown top-level keys {sorted(unknown)}")
    configs = document.get("mig-configs")
    if not isinstance(configs, dict) or not configs:
        raise MigConfigError("mig-configs must map names to lists of specs")
    result: dict[str, list[MigConfigSpec]] = {}
    for label, specs in configs.items():
        if not isinstance(specs, list) or not specs:
            raise MigConfigError(f"mig-configs.{label}: expected a non-empty list")
        result[str(label)] = [_spec(s, f"mig-configs.{label}[{i}]") for i, s in enumerate(specs)]
    return result


def export_config(label: str, layouts: dict[int, list[str]]) -> str:
    """One named config with one spec per distinct layout (GPUs sharing a layout grouped)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for index in sorted(layouts):
        groups.setdefault(tuple(sorted(layouts[index])), []).append(index)
    specs = []
    for layout, indices in groups.items():
        spec: dict[str, Any] = {"devices": indices, "mig-enabled": bool(layout)}
        spec["mig-devices"] = dict(sorted(Counter(layout).items())) if layout else {}
        specs.append(spec)
    return yaml.safe_dump({"version": "v1", "mig-configs": {label: specs}}, sort_keys=False)
