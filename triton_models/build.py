"""Builds every model the appliance ships into artifacts:

    python -m triton_models.build --out var/build

For each model directory with a manifest.json it writes <name>.tar.gz; models
with a build step of their own (digits: training) run it first. Generative (vllm) models
are built by their own script in the vLLM environment (Makefile: smollm2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from triton_models.digits import build as digits_build
from triton_models.minilm import build as minilm_build
from triton_models.packaging import pack_files

HERE = Path(__file__).resolve().parent


def build_all(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for manifest in sorted(HERE.glob("*/manifest.json")):
        spec = json.loads(manifest.read_text())
        name = spec["name"]
        if spec["format"] == "vllm":
            continue  # built in the vLLM environment (`make smollm2`: triton_models/smollm2/build.py)
        target = out / f"{name}.tar.gz"
        if name == "digits":
            digits_build.build(out)
        elif name == "minilm":
            target.write_bytes(minilm_build.pack())
        else:
            target.write_bytes(pack_files({"model.py": (manifest.parent / "model.py").read_bytes()}))
        built[name] = target
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the shipped model artifacts.")
    parser.add_argument("--out", type=Path, default=HERE.parent / "var" / "build")
    args = parser.parse_args()
    for name, path in build_all(args.out).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
