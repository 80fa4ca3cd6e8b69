"""Candidates from real ONNX graphs (issue 15): an MLP classifier trained here on
scikit-learn's bundled digits, the same MLP with one quantisation-hostile layer, and a
tiny embedder, all run by ONNX Runtime on the CPU."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from appliance.optimisation import onnxrun, quantise
from appliance.optimisation.gate import Verdict, verdict
from appliance.optimisation.metrics import measure
from appliance.optimisation.validation_data import check_against_signature, parse_validation_set

DEAD_UNIT = 7  # the hidden unit of layer 1 that never fires; the hostile layer's outlier sits on it


@dataclass(frozen=True)
class Digits:
    train: np.ndarray
    validation: np.ndarray
    labels: np.ndarray
    weights: tuple[np.ndarray, ...]


@pytest.fixture(scope="module")
def digits() -> Digits:
    """A 64-64-32-10 ReLU MLP fitted by plain gradient steps with momentum (one BLAS thread:
    on a busy machine, threads make these small products ten times slower)."""
    data = load_digits()
    x, y = (data.data / 16.0).astype(np.float32), data.target
    rng = np.random.default_rng(0)
    params = [rng.normal(0, np.sqrt(2 / 64), (64, 64)), np.zeros(64), rng.normal(0, np.sqrt(2 / 64), (64, 32)),
              np.zeros(32), rng.normal(0, np.sqrt(1 / 32), (32, 10)), np.zeros(10)]  # fmt: skip
    weights = [p.astype(np.float32) for p in params]
    velocity = [np.zeros_like(w) for w in weights]
    inputs, targets = x[:1200], np.eye(10, dtype=np.float32)[y[:1200]]
    with threadpool_limits(1):
        for _ in range(150):
            w1, b1, w2, b2, w3, b3 = weights
            a1 = inputs @ w1 + b1
            h1 = np.maximum(a1, 0)
            a2 = h1 @ w2 + b2
            h2 = np.maximum(a2, 0)
            scores = h2 @ w3 + b3
            p = np.exp(scores - scores.max(axis=1, keepdims=True))
            g = (p / p.sum(axis=1, keepdims=True) - targets) / len(inputs)
            g2 = g @ w3.T * (a2 > 0)
            g1 = g2 @ w2.T * (a1 > 0)
            grads = [inputs.T @ g1, g1.sum(0), h1.T @ g2, g2.sum(0), h2.T @ g, g.sum(0)]
            for w, v, grad in zip(weights, velocity, grads, strict=True):
                v *= 0.9
                v -= 0.1 * grad
                w += v
    return Digits(train=x[:1200], validation=x[1200:], labels=y[1200:], weights=tuple(weights))


def mlp(weights: tuple[np.ndarray, ...]) -> bytes:
    """MatMul+Add+Relu twice, then a Gemm head; nodes named layer1, hostile, head."""
    names = ("W1", "b1", "W2", "b2", "W3", "b3")
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["m1"], name="layer1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["h1"], name="relu1"),
        helper.make_node("MatMul", ["h1", "W2"], ["m2"], name="hostile"),
        helper.make_node("Add", ["m2", "b2"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["h2"], name="relu2"),
        helper.make_node("Gemm", ["h2", "W3", "b3"], ["scores"], name="head"),
    ]
    return model(nodes, [numpy_helper.from_array(w, n) for w, n in zip(weights, names, strict=True)],
                 inputs=[("x", 64)], outputs=[("scores", 10)])  # fmt: skip


def model(nodes: list[Any], initializers: list[Any], *, inputs: list[tuple[str, int]],
          outputs: list[tuple[str, int]]) -> bytes:  # fmt: skip
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["rows", d]) for n, d in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["rows", d]) for n, d in outputs], initializers,
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def hostile_weights(weights: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Layer 1's unit DEAD_UNIT never fires (zero weights, bias -1), and the second layer's
    row for it holds 1000 in every column. The float model is unchanged by the outlier, but
    symmetric INT8 then has a step of 1000/127 for that weight matrix, per tensor and per
    column alike, and every real weight (|w| < 1) rounds to zero."""
    w1, b1, w2, b2, w3, b3 = (w.copy() for w in weights)
    w1[:, DEAD_UNIT], b1[DEAD_UNIT] = 0.0, -1.0
    w2[DEAD_UNIT, :] = 1000.0
    return w1, b1, w2, b2, w3, b3


def accuracy(candidate: bytes, digits: Digits) -> dict[str, float]:
    return measure("top1_accuracy", onnxrun.run(candidate, {"x": digits.validation}), {"scores": digits.labels})


def gate_against(parent: bytes, digits: Digits) -> Callable[[bytes], Verdict]:
    baseline = accuracy(parent, digits)
    return lambda candidate: verdict("top1_accuracy", accuracy(candidate, digits), baseline, max_relative_drop=0.01)


def signature(candidate: bytes) -> tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]:
    sess = onnxrun.session(candidate)
    return (
        [(t.name, t.type, t.shape) for t in sess.get_inputs()],
        [(t.name, t.type, t.shape) for t in sess.get_outputs()],
    )


def float_weight_inputs(candidate: bytes) -> dict[str, bool]:
    """For each MatMul/Gemm node: whether its weight is still a float initializer (not the
    output of a DequantizeLinear)."""
    graph = onnx.load_model_from_string(candidate).graph
    floats = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    return {n.name: n.input[1] in floats for n in graph.node if n.op_type in ("MatMul", "Gemm")}


# --- running ----------------------------------------------------------------------------------


def test_run_in_chunks_gives_the_rows_of_one_call(digits: Digits) -> None:
    classifier = mlp(digits.weights)
    whole = onnxrun.run(classifier, {"x": digits.validation}, batch_size=1000)
    chunked = onnxrun.run(onnxrun.session(classifier), {"x": digits.validation}, batch_size=7)

    assert chunked["scores"].shape == (597, 10)
    np.testing.assert_allclose(chunked["scores"], whole["scores"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="same, non-zero number of rows"):
        onnxrun.run(classifier, {"x": digits.validation[:0]})


def test_a_session_takes_the_threads_it_is_given_and_does_not_spin(digits: Digits) -> None:
    options = onnxrun.session(mlp(digits.weights), threads=2).get_session_options()

    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_speed_is_measured_one_row_per_call(digits: Digits) -> None:
    speed = onnxrun.measure_speed(mlp(digits.weights), {"x": digits.validation[:10]}, requests=60, concurrency=3)

    assert set(speed) == {"p50_ms", "p99_ms", "throughput_rows_s", "requests", "concurrency"}
    assert 0 < speed["p50_ms"] <= speed["p99_ms"]
    assert speed["throughput_rows_s"] > 0 and speed["concurrency"] == 3


def test_an_uploaded_validation_set_judges_a_model(digits: Digits) -> None:
    """The path the optimisation job takes: parse the operator's file, check it against the
    signature, run the (read-only) rows, measure."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{"input.x": digits.validation, "expected.scores": digits.labels})
    data = parse_validation_set(buffer.getvalue(), metric="top1_accuracy")
    check_against_signature(data, {"inputs": [{"name": "x", "datatype": "FP32", "dims": [64]}],
                                   "outputs": [{"name": "scores", "datatype": "FP32", "dims": [10]}]})  # fmt: skip

    values = measure("top1_accuracy", onnxrun.run(mlp(digits.weights), data.inputs), data.expected)

    assert values == accuracy(mlp(digits.weights), digits) and values["top1_accuracy"] > 0.9


# --- candidates -------------------------------------------------------------------------------


def test_every_candidate_is_smaller_keeps_the_signature_and_the_accuracy(digits: Digits) -> None:
    classifier = mlp(digits.weights)
    baseline = accuracy(classifier, digits)
    assert baseline["top1_accuracy"] > 0.9  # a classifier worth quantising

    candidates = {
        "fp16": quantise.fp16(classifier),
        "int8_dynamic": quantise.int8_dynamic(classifier),
        "int8_static": quantise.int8_static(classifier, {"x": digits.train[:256]}),
        "int8_static_per_tensor": quantise.int8_static(classifier, {"x": digits.train[:256]}, per_channel=False),
    }
    for name, candidate in candidates.items():
        assert len(candidate) < 0.6 * len(classifier), name
        assert signature(candidate) == signature(classifier), name
        judged = verdict("top1_accuracy", accuracy(candidate, digits), baseline, max_relative_drop=0.01)
        assert judged.passed, f"{name}: {judged.reason()}"
    assert len(candidates["int8_static"]) < 0.4 * len(classifier)
    ops = {n.op_type for n in onnx.load_model_from_string(candidates["int8_static"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def qdq_arithmetic(candidate: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the QDQ graph says, computed op by op in float: ORT's basic level folds
    constants but fuses no Q/DQ into integer kernels."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(candidate, options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs), strict=True))


def test_int8_runs_as_its_qdq_graph_says_even_without_vnni() -> None:
    """The fused integer kernels must compute what the QDQ graph means. With full 8-bit
    weights they do not on x86 CPUs without VNNI (16-bit sums saturate): this Gemm, whose
    columns use very different ranges, came out 20 times further from float per channel, and
    the embedder's min cosine fell to 0.94. On a CPU with VNNI this passes either way."""
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(32, 10)).astype(np.float32) * np.linspace(0.05, 3, 10, dtype=np.float32)
    bias = rng.normal(size=10).astype(np.float32)
    x = rng.normal(size=(200, 32)).astype(np.float32)
    gemm = model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="gemm")],
                 [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
                 inputs=[("x", 32)], outputs=[("y", 10)])  # fmt: skip
    graph, rows = embedder()

    for parent, inputs in ((gemm, {"x": x}), (graph, {"x": rows})):
        for per_channel in (True, False):
            candidate = quantise.int8_static(parent, inputs, per_channel=per_channel)
            fused, meant = onnxrun.run(candidate, inputs), qdq_arithmetic(candidate, inputs)
            for name in fused:
                np.testing.assert_allclose(fused[name], meant[name], rtol=1e-4, atol=1e-4)
    error = np.abs(onnxrun.run(quantise.int8_static(gemm, {"x": x}), {"x": x})["y"] - (x @ weight + bias)).max()
    assert error < 0.05 * np.abs(x @ weight + bias).max()


def test_static_int8_runs_on_integer_kernels(digits: Digits, tmp_path: Any) -> None:
    """ORT fuses a QDQ MatMul into an integer kernel only when its output is quantised too;
    left float, the weights are dequantised on every call (30 to 60 times slower than FP32
    for a 1024-wide MLP). The optimised graph must hold no float MatMul or Gemm fed by a
    DequantizeLinear."""
    candidate = quantise.int8_static(mlp(digits.weights), {"x": digits.train[:256]})
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(candidate, options, providers=["CPUExecutionProvider"])

    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearMatMul") == 2 and ops.count("QGemm") == 1
    assert not {"MatMul", "Gemm", "FusedGemm", "FusedMatMul"} & set(ops)


# --- naming and exclusion ---------------------------------------------------------------------


def embedder() -> tuple[bytes, np.ndarray]:
    """32 -> tanh(64) -> 16, nodes left unnamed (as many exporters leave them)."""
    rng = np.random.default_rng(2)
    w1 = (rng.normal(size=(32, 64)) / np.sqrt(32)).astype(np.float32)
    w2 = (rng.normal(size=(64, 16)) / np.sqrt(64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"]), helper.make_node("Tanh", ["m1"], ["h"]),
             helper.make_node("MatMul", ["h", "W2"], ["embedding"])]  # fmt: skip
    graph = model(nodes, [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
                  inputs=[("x", 32)], outputs=[("embedding", 16)])  # fmt: skip
    return graph, rng.normal(size=(300, 32)).astype(np.float32)


def test_unnamed_nodes_get_names_that_exclusion_finds() -> None:
    graph, x = embedder()

    assert quantise.quantisable_nodes(graph) == ["MatMul_0", "MatMul_2"]
    assert quantise.quantisable_nodes(graph) == ["MatMul_0", "MatMul_2"]  # the same names every time

    candidate = quantise.int8_static(graph, {"x": x[:100]}, exclude=["MatMul_2"])
    assert float_weight_inputs(candidate) == {"MatMul_0": False, "MatMul_2": True}
    with pytest.raises(ValueError, match="cannot keep Tanh_1 in float"):
        quantise.int8_static(graph, {"x": x[:100]}, exclude=["Tanh_1"])


def test_a_name_used_twice_picks_out_one_node() -> None:
    graph, x = embedder()
    proto = onnx.load_model_from_string(graph)
    for node in proto.graph.node:
        node.name = "block" if node.op_type == "MatMul" else ""
    named_twice = proto.SerializeToString()

    assert quantise.quantisable_nodes(named_twice) == ["block", "block_1"]
    candidate = quantise.int8_static(named_twice, {"x": x[:100]}, exclude=["block_1"])
    assert float_weight_inputs(candidate) == {"block": False, "block_1": True}


def test_the_embedder_keeps_its_geometry() -> None:
    graph, x = embedder()
    reference = onnxrun.run(graph, {"x": x})
    parent = measure("embedding_agreement", reference, reference)
    assert parent["min_cosine"] == 1.0 and parent["retrieval_top1_agreement"] == 1.0

    half = measure("embedding_agreement", onnxrun.run(quantise.fp16(graph), {"x": x}), reference)
    int8 = measure("embedding_agreement", onnxrun.run(quantise.int8_static(graph, {"x": x[:100]}), {"x": x}), reference)

    assert verdict("embedding_agreement", half, parent, 0.01).passed
    assert half["min_cosine"] > 0.9999
    assert 0.99 < int8["min_cosine"] < 1.0  # INT8 moves every row a little
    assert int8["retrieval_top1_agreement"] > 0.9


# --- mixed precision --------------------------------------------------------------------------


def test_mixed_precision_keeps_exactly_the_hostile_layer_in_float(digits: Digits) -> None:
    hostile = mlp(hostile_weights(digits.weights))
    calibration = {"x": digits.train[:256]}

    result = quantise.mixed_precision(hostile, calibration, gate_against(hostile, digits))

    full = result.steps[0]
    assert full.excluded == () and not full.verdict.passed
    assert full.verdict.checks[0].measured < 0.3  # fully quantised, the classifier is near chance
    assert result.passed and result.excluded == ("hostile",)
    assert result.steps[-1].excluded == ("hostile",) and result.steps[-1].verdict.passed
    assert result.sensitivity[0][0] == "hostile" and result.sensitivity[0][1] >= 0
    assert float_weight_inputs(result.model) == {"layer1": False, "hostile": True, "head": False}
    assert len(result.model) < 0.6 * len(hostile)
    report = json.loads(json.dumps(result.as_dict()))
    assert report["excluded"] == ["hostile"] and report["steps"][0]["verdict"]["passed"] is False


def test_dynamic_mixed_precision_keeps_the_hostile_layer_in_float(digits: Digits) -> None:
    hostile = mlp(hostile_weights(digits.weights))

    result = quantise.mixed_precision(hostile, {}, gate_against(hostile, digits), method="dynamic")

    assert not result.steps[0].verdict.passed, "fully quantised, the hostile layer breaks it"
    assert result.passed and result.excluded == ("hostile",)
    kept = float_weight_inputs(result.model)  # a quantised MatMul is a MatMulInteger: not listed, or not float
    assert kept.get("hostile") is True and not kept.get("layer1", False) and not kept.get("head", False)
    with pytest.raises(ValueError, match="cannot keep nowhere in float"):
        quantise.int8_dynamic(hostile, exclude=["nowhere"])


def test_mixed_precision_stops_at_full_int8_when_that_passes(digits: Digits) -> None:
    classifier = mlp(digits.weights)

    result = quantise.mixed_precision(classifier, {"x": digits.train[:256]}, gate_against(classifier, digits))

    assert result.passed and result.excluded == () and len(result.steps) == 1 and result.sensitivity == ()


def test_mixed_precision_gives_up_after_max_steps(digits: Digits) -> None:
    classifier = mlp(digits.weights)
    evaluated: list[dict[str, bool]] = []
    margins = {"layer1": 0.2, "hostile": 0.5, "head": 0.1}  # keeping a node in float "helps" this much

    def never_enough(candidate: bytes) -> Verdict:
        kept = float_weight_inputs(candidate)
        evaluated.append(kept)
        measured = sum(margins[name] for name, is_float in kept.items() if is_float)
        return verdict("top1_accuracy", {"top1_accuracy": measured}, {"top1_accuracy": 1.0})

    result = quantise.mixed_precision(classifier, {"x": digits.train[:256]}, never_enough, max_steps=2)

    assert not result.passed
    assert [node for node, _ in result.sensitivity] == ["hostile", "layer1", "head"]
    assert [step.excluded for step in result.steps] == [(), ("hostile",), ("hostile", "layer1")]
    assert result.excluded == ("hostile", "layer1")
    assert len(evaluated) == 1 + 3 + 1  # full, leave-one-out for each node, then the second step only


# --- smoothing ----------------------------------------------------------------------------------


def layer_norm_block(outlier: float) -> bytes:
    """LayerNorm (gamma with one channel `outlier` times the rest) feeding two MatMuls and a
    residual Add, as in a transformer layer: 32 channels in, 16 out."""
    rng = np.random.default_rng(5)
    gamma = np.ones(32, np.float32)
    gamma[3] = outlier
    tensors = {"gamma": gamma, "beta": np.zeros(32, np.float32),
               "Wq": rng.normal(0, 0.2, (32, 16)).astype(np.float32), "Wv": rng.normal(0, 0.2, (32, 16)).astype(np.float32),
               "Wr": rng.normal(0, 0.2, (32, 16)).astype(np.float32)}  # fmt: skip
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "Wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["ln", "Wv"], ["v"], name="v"),
        helper.make_node("MatMul", ["ln", "Wr"], ["r"], name="residual_projection"),
        helper.make_node("Add", ["q", "v"], ["qv"], name="qv"),
        helper.make_node("Add", ["qv", "r"], ["y"], name="y"),
    ]
    return model(nodes, [numpy_helper.from_array(v, k) for k, v in tensors.items()],
                 inputs=[("x", 32)], outputs=[("y", 16)])  # fmt: skip


def test_smoothing_keeps_the_function_and_makes_dynamic_int8_closer() -> None:
    block = layer_norm_block(outlier=60.0)
    x = np.random.default_rng(6).normal(size=(300, 32)).astype(np.float32)
    exact = onnxrun.run(block, {"x": x})["y"]

    smoothed = quantise.smooth(block, {"x": x[:128]})

    np.testing.assert_allclose(onnxrun.run(smoothed, {"x": x})["y"], exact, rtol=1e-4, atol=1e-4)
    ops = [n.op_type for n in onnx.load_model_from_string(smoothed).graph.node]
    assert ops.count("Mul") == 1, "one Mul for the LayerNorm's three readers"
    assert quantise.quantisable_nodes(smoothed) == quantise.quantisable_nodes(block)  # exclusion still finds them

    def error(candidate: bytes) -> float:
        return float(np.abs(onnxrun.run(candidate, {"x": x})["y"] - exact).mean())

    plain, better = error(quantise.int8_dynamic(block)), error(quantise.int8_dynamic(smoothed))
    assert better < 0.5 * plain, (plain, better)
    with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
        quantise.smooth(block, {"x": x}, alpha=1.5)


def test_a_model_without_layer_norms_is_left_as_it_is(digits: Digits) -> None:
    classifier = mlp(digits.weights)
    smoothed = quantise.smooth(classifier, {"x": digits.train[:64]})
    assert [n.op_type for n in onnx.load_model_from_string(smoothed).graph.node] == [
        n.op_type for n in onnx.load_model_from_string(classifier).graph.node
    ]
