"""The node's Triton model repository directory, written only by its node agent.

Every write is atomic (build beside, then rename) so Triton never sees a
half-written version directory or config.pbtxt.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from appliance.agent import control
from appliance.agent.control import WARMUP_DIR, Version

_MARKER = ".appliance-sha256"


@dataclass(frozen=True)
class ModelRepository:
    root: Path
    # The backends of the Triton that reads this directory (core/tritonserver.py installed_backends).
    backends: tuple[str, ...] = ()

    def model_dir(self, model_name: str) -> Path:
        return self.root / model_name

    def version_dir(self, model_name: str, number: int) -> Path:
        return self.model_dir(model_name) / str(number)

    def materialise(self, version: Version) -> Path:
        """Puts the version's files in place, verified against the artifact's sha256.
        A directory already holding the same artifact is kept (idempotent)."""
        target = self.version_dir(version.model.name, version.number)
        marker = target / _MARKER
        runner = control.runner(version=version, backends=self.backends)
        # The runner is part of what the directory holds: a new agent release rewrites it.
        stamp = version.artifact_sha256 + (f" {hashlib.sha256(runner.read_bytes()).hexdigest()}" if runner else "")
        if marker.exists() and marker.read_text() == stamp:
            return target
        staging = target.with_name(f".{target.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        control.fetch_artifact(version=version, into=staging)
        if runner:
            shutil.copyfile(runner, staging / "model.py")
        (staging / _MARKER).write_text(stamp)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
        return target

    def write_config(self, version: Version, *, versions: list[int], gpu_memory_mib: dict[int, int] | None = None) -> str:
        """config.pbtxt from the newest version and the model's serving profile, with
        the warm-up sample files it names (written first: Triton reads them at load)."""
        text = control.triton_config(version=version, versions=versions, backends=self.backends,
                                     gpu_memory_mib=gpu_memory_mib)  # fmt: skip
        model_dir = self.model_dir(version.model.name)
        model_dir.mkdir(parents=True, exist_ok=True)
        files = control.warmup_files(version=version)
        if files:
            warmup = model_dir / WARMUP_DIR
            warmup.mkdir(exist_ok=True)
            for name, data in files.items():
                staged = warmup / f".{name}.tmp"
                staged.write_bytes(data)
                os.replace(staged, warmup / name)
        tmp = model_dir / ".config.pbtxt.tmp"
        tmp.write_text(text)
        os.replace(tmp, model_dir / "config.pbtxt")
        return text

    def remove_versions_except(self, model_name: str, keep: set[int]) -> None:
        model_dir = self.model_dir(model_name)
        if not model_dir.exists():
            return
        for child in model_dir.iterdir():
            if child.is_dir() and child.name.isdigit() and int(child.name) not in keep:
                shutil.rmtree(child, ignore_errors=True)

    def remove_model(self, model_name: str) -> None:
        shutil.rmtree(self.model_dir(model_name), ignore_errors=True)
