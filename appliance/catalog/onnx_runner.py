"""model.py that serves an ONNX version through ONNX Runtime inside Triton's Python
backend, on a node whose Triton has no ONNX Runtime backend (catalog/runtimes.py).

The agent writes this file, as it is, beside model.onnx in the version's directory; it
runs in the Python-backend stub's interpreter (the Triton environment, which ships ONNX
Runtime), so it imports nothing of the appliance. It reads the tensors' names and types
from the config Triton hands it (tritonconfig.py generated that config from the
version's signature) and keeps Triton's dynamic batching: the requests of one batch
whose inputs have the same per-row shapes are stacked into one ONNX Runtime call and
split again; requests of another shape (a different sequence length) make their own
call. One ONNX Runtime session per model instance, with `onnx_threads` intra-op threads
(config parameter; 1 by default: the instance count is how a profile asks for more
parallelism, as with the native backend's instance groups) that never spin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import onnxruntime

        config = json.loads(args["model_config"])
        threads = int(config.get("parameters", {}).get("onnx_threads", {}).get("string_value", "1") or 1)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]

    def _arrays(self, request: Any) -> dict[str, np.ndarray]:
        arrays = {}
        for name, dtype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input {name!r} is missing")
            arrays[name] = tensor.as_numpy().astype(dtype, copy=False)
        return arrays

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.session.run([name for name, _ in self.outputs], feeds)
        return [
            np.asarray(value).astype(dtype, copy=False) for value, (_, dtype) in zip(results, self.outputs, strict=True)
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            try:
                arrays = self._arrays(request)
            except Exception as exc:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            # Same per-row shapes stack into one call; unbatched models run request by request.
            key = tuple((name, a.shape[1:]) for name, a in arrays.items()) if self.batched else (index,)
            groups.setdefault(key, []).append((index, arrays))
        for members in groups.values():
            try:
                if len(members) == 1:
                    split = [self._run(members[0][1])]
                else:
                    feeds = {name: np.concatenate([m[1][name] for m in members]) for name, _ in self.inputs}
                    stacked = self._run(feeds)
                    bounds = np.cumsum([len(next(iter(m[1].values()))) for m in members])[:-1]
                    parts = [np.split(value, bounds) for value in stacked]
                    split = [[part[i] for part in parts] for i in range(len(members))]
            except Exception as exc:
                for index, _ in members:
                    responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ONNX Runtime: {exc}"))
                continue
            for (index, _), values in zip(members, split, strict=True):
                tensors = [pb_utils.Tensor(name, value) for (name, _), value in zip(self.outputs, values, strict=True)]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses
