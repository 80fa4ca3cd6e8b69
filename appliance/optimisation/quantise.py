"""Cheaper candidates of an ONNX model: FP16, INT8 (dynamic and static) and mixed precision.

Bytes in, bytes out. ONNX Runtime's quantisation tools work on files, so each call
works in its own temporary directory. Every function first gives unnamed nodes names
(`_named`), the same way each time, so that the node names `quantisable_nodes`
returns are the ones `int8_static(exclude=...)` finds again.

Static INT8 quantises only MatMul, Gemm and Conv (the nodes that carry the weights
and the arithmetic): every node it touches is then one `quantisable_nodes` names and
mixed precision can keep in float, and nothing else (an Add, a Relu) is quantised
behind the gate's back.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.transformers.float16 import convert_float_to_float16

from appliance.optimisation.gate import Verdict

QUANTISABLE_OPS = ("MatMul", "Gemm", "Conv")
# Weights are quantised to 7 bits, not 8. On x86 CPUs without VNNI (AVX2 only, like the
# machine this was developed on) ONNX Runtime multiplies 8-bit activations by 8-bit
# weights with an instruction that adds pairs of products into 16 bits and saturates: with full
# 8-bit weights the sums overflow and the fused model computes something else than its own
# QDQ graph says (seen here: min cosine 0.94 instead of 0.999 for a small embedder, and a Gemm
# off by 20 times its quantisation error, per-channel weights being worst since every column
# then uses the full range). 7-bit weights cannot overflow, so the model judged by the gate
# computes the same on any CPU and on a GPU; the bit lost costs little next to per-channel
# scales. ONNX Runtime documents reduce_range for exactly this.
REDUCE_RANGE = True
# Rows per calibration batch: min/max are merged across batches, so this bounds memory only.
_CALIBRATION_BATCH = 64


@contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantiser logs a line per tensor at INFO on the root logger (hundreds
    for MiniLM); the job's progress says what matters. Workers quantise one model at a time."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def fp16(model: bytes) -> bytes:
    """Weights and arithmetic in FP16, inputs and outputs still FP32 (casts at the edges),
    so the candidate keeps its parent's signature and serves the same requests."""
    return bytes(convert_float_to_float16(_named(model), keep_io_types=True).SerializeToString())


def int8_dynamic(model: bytes, *, exclude: Sequence[str] = ()) -> bytes:
    """8-bit weights, per output channel, activations quantised per call from their own
    range. Needs no calibration data; ORT's default op list (MatMul, Conv, Gather, Attention,
    ...), so an embedding table shrinks too. `exclude` names nodes (see `quantisable_nodes`)
    left in float.

    Unsigned weights (U8U8), not the signed 7-bit ones static INT8 uses: ORT's U8U8 kernels
    widen both operands to 16 bits before multiplying, so they cannot saturate on a CPU
    without VNNI and need no bit taken off. Measured here (EPYC, AVX2, no VNNI) on
    all-MiniLM-L6-v2 over 214 sentence rows: signed 7-bit per-channel weights gave min cosine
    0.959 to FP32, unsigned 8-bit per-channel 0.982, and ORT's defaults (signed, per tensor)
    0.92 with retrieval agreement 0.74."""
    proto = _named(model)
    _check_exclusion(proto, exclude)
    with tempfile.TemporaryDirectory() as workdir:
        source, target = _save(proto, workdir), Path(workdir, "int8.onnx")
        with _quiet():
            quantize_dynamic(source, target, weight_type=QuantType.QUInt8, per_channel=True, reduce_range=False,
                             nodes_to_exclude=list(exclude))  # fmt: skip
        return target.read_bytes()


def smooth(model: bytes, calibration: dict[str, np.ndarray], *, alpha: float = 0.5) -> bytes:
    """The same function, easier to quantise: SmoothQuant's migration (Xiao et al., 2022)
    of activation outliers into the weights, for the MatMuls that read a
    LayerNormalization's output (a transformer's Q, K, V and first feed-forward layer).

    A few channels of a LayerNorm's output are much larger than the rest, so one scale per
    tensor (dynamic INT8 quantises each activation per call with one) leaves the others a
    handful of steps. Per channel j, s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), from the
    calibration rows; a Mul by 1/s is inserted between the LayerNorm and those MatMuls (its
    output also feeds the residual path, which must not change) and row j of each weight is
    multiplied by s_j: in float the model computes the same (up to rounding), and the
    activation the quantiser sees is flatter. Measured here on all-MiniLM-L6-v2 with dynamic
    INT8 (unsigned per-channel weights): min cosine to FP32 0.982 -> 0.989; smoothing the
    second feed-forward layer's input too (a GELU's output) made it worse (0.963), so only
    LayerNorm outputs are smoothed."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    proto = _named(model)
    weights = {t.name: t for t in proto.graph.initializer}
    layer_norms = {out for node in proto.graph.node if node.op_type == "LayerNormalization" for out in node.output[:1]}
    groups: dict[str, list[Any]] = {}
    for node in proto.graph.node:
        if node.op_type == "MatMul" and node.input[0] in layer_norms and node.input[1] in weights:
            groups.setdefault(node.input[0], []).append(node)
    if not groups:
        return bytes(proto.SerializeToString())
    maxima = _activation_maxima(proto, list(groups), calibration)
    inserted: dict[str, Any] = {}
    for index, (source, matmuls) in enumerate(groups.items()):
        rows = np.max([np.abs(numpy_helper.to_array(weights[m.input[1]])).max(axis=1) for m in matmuls], axis=0)
        scale = np.clip(np.power(np.maximum(maxima[source], 1e-5), alpha) / np.power(np.maximum(rows, 1e-5), 1 - alpha),
                        1e-2, 1e2).astype(np.float32)  # fmt: skip
        inverse, smoothed = f"smooth_{index}_inverse", f"smooth_{index}_out"
        proto.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        inserted[source] = onnx.helper.make_node("Mul", [source, inverse], [smoothed], name=f"smooth_{index}")
        for matmul in matmuls:
            matmul.input[0] = smoothed
            tensor = weights[matmul.input[1]]
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * scale[:, None], tensor.name))
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    for node in nodes:  # each Mul right after the node that makes its input: the graph stays sorted
        proto.graph.node.append(node)
        proto.graph.node.extend(inserted[out] for out in node.output if out in inserted)
    return bytes(proto.SerializeToString())


def _activation_maxima(proto: Any, tensors: list[str], calibration: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each tensor over the calibration rows (padding included: a
    padded position's LayerNorm output is as ordinary as any other row's)."""
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    for batch in _Calibration(calibration)._iterate():
        for name, value in zip(tensors, session.run(tensors, batch), strict=True):
            channel = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            maxima[name] = channel if name not in maxima else np.maximum(maxima[name], channel)
    return maxima


def _check_exclusion(proto: Any, exclude: Sequence[str]) -> None:
    unknown = sorted(set(exclude) - set(_quantisable(proto)))
    if unknown:
        raise ValueError(f"cannot keep {', '.join(unknown)} in float: not a MatMul, Gemm or Conv node of the model")


def int8_static(
    model: bytes, calibration: dict[str, np.ndarray], *, per_channel: bool = True, exclude: Sequence[str] = ()
) -> bytes:
    """INT8 weights and activations in QDQ form, activation ranges (min/max) taken from
    running `calibration` (model inputs, rows first) through the float model. `exclude`
    names nodes (see `quantisable_nodes`) left in float."""
    proto = _named(model)
    _check_exclusion(proto, exclude)
    with tempfile.TemporaryDirectory() as workdir:
        source, target = _save(proto, workdir), Path(workdir, "int8.onnx")
        with _quiet():
            quantize_static(
                source,
                target,
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTISABLE_OPS),
                per_channel=per_channel,
                reduce_range=REDUCE_RANGE,
                # Signed, symmetric activations (zero point 0), like the weights: TensorRT builds
                # engines from QDQ models only when they are symmetric INT8, so the candidate judged
                # here on ORT is the file an engine can be built from; S8S8 QDQ is also ORT's own
                # first recommendation. The cost: a ReLU output uses only half of the signed range.
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    # A Gemm's output stays float: ORT's CPU kernel for it (QGemm) can give a float
                    # result, and a classifier's scores, often a Gemm's, are then not rounded onto 256
                    # steps where close classes tie. Not so for MatMul and Conv: ORT fuses only
                    # DQ -> MatMul -> Q (QLinearMatMul) and DQ -> Conv -> Q, and without the Q it
                    # dequantises the weights on every call and multiplies in float, which measured
                    # 30 to 60 times slower than float for a 1024-wide MLP.
                    "OpTypesToExcludeOutputQuantization": ["Gemm"],
                },
            )
        return target.read_bytes()


def quantisable_nodes(model: bytes) -> list[str]:
    """Names of the MatMul, Gemm and Conv nodes of the model's graph, in graph order."""
    return _quantisable(_named(model))


@dataclass(frozen=True)
class Step:
    """One model tried by mixed precision: the nodes it kept in float and the gate's verdict."""

    excluded: tuple[str, ...]
    verdict: Verdict


@dataclass(frozen=True)
class MixedResult:
    """What mixed precision settled on, and how it got there (for the job's report)."""

    model: bytes
    excluded: tuple[str, ...]
    steps: tuple[Step, ...]
    passed: bool
    # (node, gate margin with only that node kept in float), most sensitive first; empty
    # when the fully quantised model passed, and only the nodes tried when a leave-one-out
    # model passed early.
    sensitivity: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, without the model bytes."""
        return {
            "passed": self.passed,
            "excluded": list(self.excluded),
            "steps": [{"excluded": list(s.excluded), "verdict": s.verdict.as_dict()} for s in self.steps],
            "sensitivity": [{"node": node, "margin": margin} for node, margin in self.sensitivity],
        }


def mixed_precision(
    model: bytes,
    calibration: dict[str, np.ndarray],
    evaluate: Callable[[bytes], Verdict],
    *,
    max_steps: int = 8,
    per_channel: bool = True,
    method: str = "static",
) -> MixedResult:
    """INT8 with as few nodes kept in float as the gate (`evaluate`) needs: static
    (`int8_static`, calibrated; the form a TensorRT engine is built from) or, with
    method="dynamic", `int8_dynamic` (no calibration; `calibration` is not read), which is
    the faster of the two on CPUs here.

    Quantise everything; if that fails the gate, rank the quantisable nodes by
    sensitivity and keep the most sensitive in float, one more per step, until the gate
    passes or `max_steps` nodes are kept.

    Sensitivity is measured leave-one-out: for each node, quantise all the others and
    ask the gate how close that model comes (its margin, the smallest measured -
    threshold over the gated values). One-at-a-time (quantise only that node) costs the
    same, one quantisation and one evaluation per node, but answers a different
    question: how much a node hurts a float model. Leave-one-out asks how much keeping
    it in float helps the model that will ship, where every other node is quantised and
    errors compound, which is the decision each step makes. It also stops early: the
    first leave-one-out model that passes is the answer, one node in float, fewer being
    impossible since the fully quantised model failed. The ranking is computed once
    (not again after each step), and the first step is a leave-one-out model already
    judged: 1 + K + (max_steps - 1) quantisations and evaluations at most for K nodes,
    where re-ranking would cost K per step.

    When no model within `max_steps` passes, the result holds the last one tried (the
    most nodes in float) with passed=False, so the report can say how close it came.
    """
    if max_steps < 0:
        raise ValueError(f"max_steps must be at least 0, got {max_steps}")
    if method not in ("static", "dynamic"):
        raise ValueError(f"method must be 'static' or 'dynamic', got {method!r}")
    tried: dict[tuple[str, ...], tuple[bytes, Verdict]] = {}

    def attempt(excluded: tuple[str, ...]) -> tuple[bytes, Verdict]:
        if excluded not in tried:
            candidate = (int8_dynamic(model, exclude=excluded) if method == "dynamic"
                         else int8_static(model, calibration, per_channel=per_channel, exclude=excluded))  # fmt: skip
            tried[excluded] = (candidate, evaluate(candidate))
        return tried[excluded]

    candidate, result = attempt(())
    steps = [Step((), result)]
    nodes = quantisable_nodes(model)
    if result.passed or not nodes or max_steps == 0:
        return MixedResult(candidate, (), tuple(steps), result.passed)
    margins = []
    for node in nodes:
        single, judged = attempt((node,))
        margins.append((node, _margin(judged)))
        if judged.passed:
            steps.append(Step((node,), judged))
            return MixedResult(single, (node,), tuple(steps), True, _ranked(margins))
    ranking = _ranked(margins)
    excluded: tuple[str, ...] = ()
    for count in range(1, min(max_steps, len(nodes)) + 1):
        excluded = tuple(node for node, _ in ranking[:count])
        candidate, result = attempt(excluded)
        steps.append(Step(excluded, result))
        if result.passed:
            break
    return MixedResult(candidate, excluded, tuple(steps), result.passed, ranking)


def int8_mixed(model: bytes, calibration: dict[str, np.ndarray], evaluate: Callable[[bytes], Verdict], *,
               max_steps: int = 8) -> MixedResult:  # fmt: skip
    """The job's mixed-precision candidate: smoothed (`smooth`), then dynamic INT8 with as
    few layers kept in float as the gate needs (`mixed_precision`, method "dynamic", the
    faster INT8 on the CPU here). On all-MiniLM-L6-v2 at the 1 % gate this kept one of 48
    MatMuls in float (min cosine 0.991, retrieval agreement 1.0, 0.26x the size; 26 s)."""
    return mixed_precision(smooth(model, calibration), calibration, evaluate, max_steps=max_steps, method="dynamic")


def _margin(verdict: Verdict) -> float:
    """How far the verdict is from failing (negative: failed by that much); NaN counts as worst."""
    margin = min(check.measured - check.threshold for check in verdict.checks)
    return -math.inf if math.isnan(margin) else margin


def _ranked(margins: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    # Stable sort: equal margins keep graph order, so the ranking is deterministic.
    return tuple(sorted(margins, key=lambda item: -item[1]))


class _Calibration(CalibrationDataReader):
    """Feeds the calibration rows to ORT's calibrator in batches."""

    def __init__(self, calibration: dict[str, np.ndarray]) -> None:
        if not calibration:
            raise ValueError("calibration needs at least one input array")
        self._calibration = calibration
        self._rows = min(len(array) for array in calibration.values())
        if self._rows == 0 or any(len(array) != self._rows for array in calibration.values()):
            raise ValueError("calibration arrays must have the same, non-zero number of rows")
        self._batches = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self._rows, _CALIBRATION_BATCH):
            yield {name: array[start : start + _CALIBRATION_BATCH] for name, array in self._calibration.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()


def _named(model: bytes) -> Any:
    """The model with every graph node named: unnamed ones get `<op>_<index>` and a name
    used twice gets a suffix on its later uses, so that a name picks out exactly one node.
    Deterministic: the same bytes always get the same names."""
    proto = onnx.load_model_from_string(model)
    taken = {node.name for node in proto.graph.node if node.name}
    seen: set[str] = set()
    for index, node in enumerate(proto.graph.node):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or f"{node.op_type}_{index}"
        name, suffix = base, 1
        while name in taken:
            name, suffix = f"{base}_{suffix}", suffix + 1
        node.name = name
        taken.add(name)
        seen.add(name)
    return proto


def _quantisable(proto: Any) -> list[str]:
    return [str(node.name) for node in proto.graph.node if node.op_type in QUANTISABLE_OPS]


def _save(proto: Any, workdir: str) -> Path:
    path = Path(workdir, "model.onnx")
    onnx.save_model(proto, path)
    return path
