"""Model optimisation end to end, on real parts: the MiniLM embedder uploaded as an ONNX
version with a validation set, served on a CPU node (whose Triton has only the Python
backend: the appliance's ONNX Runtime runner serves it); an optimisation job on the
optimiser's Celery worker makes INT8 candidates and judges them; the candidate that
passes rolls out and answers a stock tritonclient through the gateway; the one that fails
is refused at deployment with its numbers.

The set allows a 2 % drop (the operator's choice per set; the default is 1 %, which INT8
dynamic misses here by a little: docs/benchmarks.md has the numbers and the mixed-precision
search that closes the gap, too slow for a test).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.e2e.fleet import Fleet, wait_for
from tests.e2e.operator import Operator
from triton_models.minilm import build as minilm_build
from triton_models.minilm import validation as minilm_validation

pytestmark = [pytest.mark.e2e]

NODE = "node-opt"
MODEL = "minilm-onnx"


@pytest.fixture(scope="module")
def fleet(db_unblocked: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    env = {"APPLIANCE_ROLLOUT_TICK_S": "0.5", "APPLIANCE_OPTIMISE_SPEED_REQUESTS": "60"}
    with Fleet.running(tmp_path_factory.mktemp("optimisation"), {NODE: ()}, env) as fleet:
        fleet.start_optimiser()
        yield fleet


def _inputs(rows: dict[str, Any]) -> list[grpcclient.InferInput]:
    tensors = []
    for name, datatype in (("input_ids", "INT64"), ("attention_mask", "FP32")):
        tensor = grpcclient.InferInput(name, list(rows[name].shape), datatype)
        tensor.set_data_from_numpy(rows[name])
        tensors.append(tensor)
    return tensors


def test_an_int8_candidate_that_passes_the_gate_rolls_out_and_one_that_fails_is_refused(fleet: Fleet) -> None:
    olga = Operator("olga-opt")
    olga.post("models/", {"name": MODEL})
    reference = olga.post("versions/", {
        "model": MODEL, "format": "onnx", "signature": json.dumps(minilm_validation.SIGNATURE),
        "max_batch_size": minilm_validation.MAX_BATCH_SIZE,
        "artifact": SimpleUploadedFile("model.onnx", minilm_build.onnx_model()),
    }, fmt="multipart")  # fmt: skip
    vset = olga.post("validation-sets/", {
        "model": MODEL, "name": "sentence-pairs", "metric": "embedding_agreement", "max_relative_drop": "0.02",
        "content": SimpleUploadedFile("pairs.npz", minilm_validation.validation_set()),
    }, fmt="multipart")  # fmt: skip
    assert vset["rows"] == 2 * len(minilm_validation.sentences(128))
    first = olga.post("deployments/", {"version": reference["id"], "nodes": [NODE]})
    assert olga.wait_ended(first["id"], fleet)["state"] == "live"
    olga.post("tenants/", {"slug": "optco", "name": "OptCo"})
    olga.post("grants/", {"tenant": "optco", "model": MODEL})
    key = olga.post("api-keys/", {"tenant": "optco", "name": "embed"})["key"]

    job = olga.post("optimisation-jobs/", {"version": reference["id"], "validation_set": vset["id"],
                                           "kinds": ["int8_dynamic", "int8_static"]})  # fmt: skip
    done = wait_for("the optimisation job", lambda: (j := olga.get(f"optimisation-jobs/{job['id']}/"))["state"]
                    in ("succeeded", "failed") and j, timeout=600, procs=fleet.procs)  # fmt: skip
    assert done["state"] == "succeeded", done["error"]
    candidates = {c["kind"]: c for c in done["candidates"]}
    assert set(candidates) == {"reference", "int8_dynamic", "int8_static"}
    dynamic, static = candidates["int8_dynamic"], candidates["int8_static"]
    assert dynamic["passed"], dynamic["note"]
    assert dynamic["size_bytes"] <= 0.3 * candidates["reference"]["size_bytes"]
    assert not static["passed"], "static INT8 of this embedder misses the gate on this CPU (measured: min cosine ~0.7)"
    if done["recommended"] is not None:
        assert done["recommended"] == dynamic["id"] and "int8_dynamic" in done["recommendation"]

    # The one that failed: refused at deployment, with the numbers.
    refused = olga.client.post("/api/v1/deployments/", {"version": static["version"], "nodes": [NODE]}, format="json")
    assert refused.status_code == 409, refused.content
    detail = refused.json()["detail"]
    failing = next(c for c in static["checks"] if not c["passed"])
    assert f"{failing['name']} measured" in detail and "sentence-pairs" in detail

    # The one that passed: rolls out over the reference and answers through the gateway.
    rollout = olga.post("deployments/", {"version": dynamic["version"]})
    assert olga.wait_ended(rollout["id"], fleet)["state"] == "live"
    rows = minilm_validation.tokenise(["The iris data set holds three species of flowers.",
                                       "Each image is a handwritten digit of eight by eight pixels."])  # fmt: skip
    client = grpcclient.InferenceServerClient(fleet.gateway)
    wait_for("the gateway to route to the INT8 version", lambda: client.infer(
        MODEL, _inputs(rows), headers={"authorization": f"Bearer {key}"}).get_response().model_version
        == str(dynamic["version_number"]), timeout=30, procs=fleet.procs)  # fmt: skip
    served = np.asarray(client.infer(MODEL, _inputs(rows), headers={"authorization": f"Bearer {key}"}).as_numpy("embedding"))
    import onnxruntime

    fp32 = onnxruntime.InferenceSession(minilm_build.onnx_model()).run(["embedding"], rows)[0]
    cosine = (served * fp32).sum(axis=1) / np.linalg.norm(served, axis=1) / np.linalg.norm(fp32, axis=1)
    assert served.shape == (2, 384) and cosine.min() >= 0.98, cosine

