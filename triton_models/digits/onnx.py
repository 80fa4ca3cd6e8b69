"""The digits classifier as an ONNX graph: the same weights and the same signature as
the python-format artifact (IMAGE FP32 [64] in; PROBABILITIES FP32 [10] and LABEL INT32
[1] out, batch first), so an ONNX version is a re-export of a python one.

Built with onnx.helper from the trained weights (build.train): divide by the pixel
scale, MatMul + bias + ReLU, MatMul + bias, Softmax, ArgMax cast to INT32. The ONNX
artifact is the model.onnx file itself.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def graph(weights: dict[str, np.ndarray]) -> bytes:
    initialisers = [
        numpy_helper.from_array(np.asarray(weights["scale"], np.float32).reshape(()), "scale"),
        numpy_helper.from_array(weights["w1"].astype(np.float32), "w1"),
        numpy_helper.from_array(weights["b1"].astype(np.float32), "b1"),
        numpy_helper.from_array(weights["w2"].astype(np.float32), "w2"),
        numpy_helper.from_array(weights["b2"].astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Div", ["IMAGE", "scale"], ["x"], name="scale_pixels"),
        helper.make_node("MatMul", ["x", "w1"], ["h_mm"], name="hidden_matmul"),
        helper.make_node("Add", ["h_mm", "b1"], ["h_pre"], name="hidden_bias"),
        helper.make_node("Relu", ["h_pre"], ["h"], name="hidden_relu"),
        helper.make_node("MatMul", ["h", "w2"], ["o_mm"], name="output_matmul"),
        helper.make_node("Add", ["o_mm", "b2"], ["logits"], name="output_bias"),
        helper.make_node("Softmax", ["logits"], ["PROBABILITIES"], name="softmax", axis=1),
        helper.make_node("ArgMax", ["logits"], ["label64"], name="argmax", axis=1, keepdims=1),
        helper.make_node("Cast", ["label64"], ["LABEL"], name="label_int32", to=TensorProto.INT32),
    ]
    body = helper.make_graph(
        nodes, "digits",
        [helper.make_tensor_value_info("IMAGE", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("PROBABILITIES", TensorProto.FLOAT, ["batch", 10]),
         helper.make_tensor_value_info("LABEL", TensorProto.INT32, ["batch", 1])],
        initialisers,
    )  # fmt: skip
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="appliance")
    model.ir_version = 8  # what ONNX Runtime 1.22 and Triton 2.51's backend both read
    onnx.checker.check_model(model)
    return model.SerializeToString()


def reference(weights: dict[str, np.ndarray], images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the graph computes, in NumPy: (probabilities, labels [N, 1])."""
    x = images.astype(np.float32) / np.float32(weights["scale"])
    logits = np.maximum(x @ weights["w1"] + weights["b1"], 0) @ weights["w2"] + weights["b2"]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32), logits.argmax(axis=1).astype(np.int32)[:, None]


def validation_set() -> bytes:
    """The held-out split (build.split) as a validation file for metric top1_accuracy:
    input.IMAGE [N, 64] FP32 and expected.LABEL [N] class labels."""
    import io

    from triton_models.digits import build

    _, x_test, _, y_test = build.split()
    buf = io.BytesIO()
    np.savez(buf, **{"input.IMAGE": x_test.astype(np.float32), "expected.LABEL": y_test.astype(np.int64)})
    return buf.getvalue()
