"""Decoupled Triton Python-backend model used to test streaming (ModelStreamInfer)."""

import numpy as np
import triton_python_backend_utils as pb_utils

MAX_COUNT = 1000


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy().reshape(-1)[0])
            if not 0 <= count <= MAX_COUNT:
                sender.send(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"COUNT must be between 0 and {MAX_COUNT}, got {count}")
                    ),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            for value in range(count - 1, -1, -1):
                sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("VALUE", np.array([value], dtype=np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
