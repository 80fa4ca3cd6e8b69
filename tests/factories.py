"""Factories for domain objects, going through the same services the API uses."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from appliance.catalog.models import Model, ModelVersion
from appliance.catalog.services import model_create, version_upload
from appliance.nodes.models import Node
from appliance.nodes.services import node_create
from triton_models.packaging import pack_files

MODELS_DIR = Path(__file__).resolve().parent.parent / "triton_models"


def manifest(name: str) -> dict[str, Any]:
    return json.loads((MODELS_DIR / name / "manifest.json").read_text())


def python_artifact(source: str = "class TritonPythonModel:\n    pass\n") -> bytes:
    return pack_files({"model.py": source.encode()})


def make_node(name: str = "node-a", zone: str = "default") -> Node:
    return node_create(name=name, zone=zone, grpc_address="127.0.0.1:1")


def make_version(model_name: str = "digits", *, artifact: bytes | None = None, **overrides: Any) -> ModelVersion:
    model = Model.objects.filter(name=model_name).first() or model_create(name=model_name)
    spec = manifest("digits")
    fields: dict[str, Any] = {
        "fmt": "python",
        "signature": spec["signature"],
        "max_batch_size": spec["max_batch_size"],
        "decoupled": False,
    }
    fields.update(overrides)
    return version_upload(model=model, artifact=io.BytesIO(artifact or python_artifact()), **fields)


def validation_npz(rows: int = 20, *, image_dims: int = 64, dtype: str = "float32", labels: bool = True) -> bytes:
    """A validation set file for the digits signature (input.IMAGE [rows, 64] FP32,
    expected.LABEL class labels), as an operator builds it with np.savez."""
    import numpy as np

    arrays: dict[str, Any] = {"input.IMAGE": np.zeros((rows, image_dims), dtype=dtype)}
    if labels:
        arrays["expected.LABEL"] = np.arange(rows, dtype=np.int64) % 10
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def make_validation_set(model: Model | str = "digits", name: str = "holdout", *, metric: str = "top1_accuracy",
                        max_relative_drop: float = 0.01, content: bytes | None = None) -> Any:  # fmt: skip
    from appliance.catalog.services import validation_set_upload

    if isinstance(model, str):
        model = Model.objects.get(name=model)
    return validation_set_upload(model=model, name=name, metric=metric, max_relative_drop=max_relative_drop,
                                 content=io.BytesIO(content or validation_npz()))  # fmt: skip


def make_gate_result(version: ModelVersion, validation_set: Any, *, measured: float, baseline: float = 0.97) -> Any:
    """A gate run as the optimisation job records it: one check, threshold from the set's margin."""
    from appliance.catalog.services import gate_record

    threshold = baseline - abs(baseline) * validation_set.max_relative_drop
    check = {"name": validation_set.metric, "measured": measured, "baseline": baseline, "threshold": threshold,
             "passed": measured >= threshold}  # fmt: skip
    return gate_record(version=version, validation_set=validation_set, passed=check["passed"], checks=[check],
                       values={validation_set.metric: measured}, baseline_values={validation_set.metric: baseline},
                       measured_on="node-a (CPU, onnxruntime 1.22.1)")  # fmt: skip
