"""A smoke inference against a freshly loaded version, built from its signature."""

from __future__ import annotations

import queue
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import triton_to_np_dtype

from appliance.agent.control import Version, is_generative


class SmokeError(RuntimeError):
    """The version loaded but did not answer a well-formed request correctly."""


# A generative version is asked for one token of a real prompt (an empty one is refused by the engine).
_GENERATIVE_SMOKE = {"text_input": b"Hello", "sampling_parameters": b'{"max_tokens": 1}'}


def _inputs(version: Version) -> list[triton_grpc.InferInput]:
    inputs = []
    generative = is_generative(version)
    for tensor in version.signature["inputs"]:
        if generative:
            if tensor["name"] in _GENERATIVE_SMOKE:
                item = triton_grpc.InferInput(tensor["name"], [1], "BYTES")
                item.set_data_from_numpy(np.array([_GENERATIVE_SMOKE[tensor["name"]]], dtype=np.object_))
                inputs.append(item)
            continue
        if tensor.get("optional"):
            continue
        dims = [1 if d == -1 else d for d in tensor["dims"]]
        shape = ([1] if version.max_batch_size > 0 else []) + dims
        if tensor["datatype"] == "BYTES":
            data = np.full(shape, b"", dtype=np.object_)
        else:
            data = np.zeros(shape, dtype=triton_to_np_dtype(tensor["datatype"]))
        item = triton_grpc.InferInput(tensor["name"], shape, tensor["datatype"])
        item.set_data_from_numpy(data)
        inputs.append(item)
    return inputs


def _check_outputs(version: Version, result: Any) -> None:
    for tensor in version.signature["outputs"]:
        if result.as_numpy(tensor["name"]) is None:
            raise SmokeError(f"smoke inference: output {tensor['name']} is missing from the response")


def smoke_infer(client: triton_grpc.InferenceServerClient, version: Version, *, timeout: float) -> None:
    name, number = version.model.name, str(version.number)
    if not version.decoupled:
        try:
            result = client.infer(name, _inputs(version), model_version=number, client_timeout=timeout)
        except triton_grpc.InferenceServerException as exc:
            raise SmokeError(f"smoke inference failed: {exc.message()}") from exc
        _check_outputs(version, result)
        return
    # Decoupled models answer only on a stream; zeros must end with the final flag.
    events: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    try:
        client.async_stream_infer(name, _inputs(version), model_version=number, enable_empty_final_response=True)
        while True:
            try:
                result, error = events.get(timeout=timeout)
            except queue.Empty as exc:
                raise SmokeError("smoke stream: no final response before the timeout") from exc
            if error is not None:
                raise SmokeError(f"smoke stream failed: {error}")
            params = result.get_response().parameters
            if "triton_final_response" in params and params["triton_final_response"].bool_param:
                return
    finally:
        client.stop_stream()
