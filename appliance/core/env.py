"""Typed readers for APPLIANCE_* environment variables.

Every setting of the appliance is read through these helpers so that a bad value
fails loudly at start-up instead of surfacing as odd behaviour later. Secrets can
be given as ``<NAME>_FILE`` pointing at a file that holds the value.
"""

from __future__ import annotations

import os
from pathlib import Path

PREFIX = "APPLIANCE_"


class SettingError(RuntimeError):
    """A setting has a value the appliance cannot use."""


def _raw(name: str) -> str | None:
    key = PREFIX + name
    file_key = key + "_FILE"
    if file_key in os.environ:
        path = Path(os.environ[file_key])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise SettingError(f"{file_key}={path}: cannot read the file ({exc})") from exc
    return os.environ.get(key)


def env_str(name: str, default: str) -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise SettingError(f"{PREFIX}{name}={value!r}: expected an integer") from exc
    if minimum is not None and number < minimum:
        raise SettingError(f"{PREFIX}{name}={number}: must be at least {minimum}")
    return number


def env_float(name: str, default: float) -> float:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise SettingError(f"{PREFIX}{name}={value!r}: expected a number") from exc


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingError(f"{PREFIX}{name}={value!r}: expected true or false")


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None or value == "":
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_path(name: str) -> Path | None:
    value = env_str(name, "")
    return Path(value) if value else None
