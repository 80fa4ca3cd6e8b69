"""A stand-in for an expensive text model (a small generator): it answers each TEXT
with a deterministic ANSWER after a fixed 40 ms of simulated generation, so that
what a cache saves is measurable on a CPU. Not a language model: tests and
benchmarks only."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

GENERATION_S = 0.040


class TritonPythonModel:
    def initialize(self, args):
        self.version = args["model_version"]

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            time.sleep(GENERATION_S)
            answers = [f"v{self.version} answer to: {t.decode('utf-8', 'replace')}".encode() for t in texts]
            out = np.array(answers, dtype=np.object_).reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("ANSWER", out)]))
        return responses
