"""Triton Python-backend model: digit classifier (8x8 grey images, pixel values 0-16).

A one-hidden-layer MLP trained by triton_models/digits/build.py on scikit-learn's
digits data; the weights live next to this file in weights.npz.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = Path(args["model_repository"]) / args["model_version"]
        weights = np.load(here / "weights.npz")
        self.w1 = weights["w1"].astype(np.float32)
        self.b1 = weights["b1"].astype(np.float32)
        self.w2 = weights["w2"].astype(np.float32)
        self.b2 = weights["b2"].astype(np.float32)
        self.scale = np.float32(weights["scale"])
        config = json.loads(args["model_config"])
        self.n_features = int(config["input"][0]["dims"][0])

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            x = images.reshape(-1, self.n_features).astype(np.float32) / self.scale
            hidden = np.maximum(x @ self.w1 + self.b1, 0.0)
            logits = hidden @ self.w2 + self.b2
            logits -= logits.max(axis=1, keepdims=True)
            exp = np.exp(logits)
            probabilities = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
            labels = probabilities.argmax(axis=1).astype(np.int32).reshape(-1, 1)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("PROBABILITIES", probabilities),
                        pb_utils.Tensor("LABEL", labels),
                    ]
                )
            )
        return responses
