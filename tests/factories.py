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
