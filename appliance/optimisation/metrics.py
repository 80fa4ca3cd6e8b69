"""Metric values from a model's outputs on a validation set.

The same function measures the parent and every candidate, so that the gate compares
numbers computed the same way. Inputs are the arrays of `onnxrun.run` and of a parsed
validation set (`validation_data`); the shapes the parser guarantees are checked again
here only where a model's output could differ from them.
"""

from __future__ import annotations

import numpy as np

from appliance.optimisation.validation_data import METRICS

# Elements of the similarity block computed at once for retrieval agreement: 4 Mi float64
# values (32 MiB), so 100,000 rows of embeddings are compared without an N x N matrix.
_BLOCK_ELEMENTS = 4 * 1024 * 1024


def measure(metric: str, outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Returns the metric's values for `outputs` judged against `expected` (one array, named
    like the output it judges): `top1_accuracy` gives {"top1_accuracy"}; `embedding_agreement`
    gives {"min_cosine", "mean_cosine", "retrieval_top1_agreement"}."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if len(expected) != 1:
        raise ValueError(f"expected one array to compare with, got {len(expected)}")
    ((name, reference),) = expected.items()
    if name not in outputs:
        raise ValueError(f"the model gave no output {name!r} (its outputs: {', '.join(sorted(outputs))})")
    output = np.asarray(outputs[name])
    if output.shape[0] != reference.shape[0]:
        raise ValueError(f"output {name!r} has {output.shape[0]} rows, the expected array {reference.shape[0]}")
    if metric == "top1_accuracy":
        return {"top1_accuracy": top1_accuracy(output, reference)}
    return embedding_agreement(output, reference)


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of rows whose highest score is at the label's index (ties go to the
    lowest index, as np.argmax does, for parent and candidate alike). An integer output of
    one column is the model's own label (a classifier's LABEL output) and is compared as
    it is: the argmax of one column would always be 0."""
    if scores.ndim == 2 and scores.shape[1] == 1 and np.issubdtype(scores.dtype, np.integer):
        return float(np.mean(scores[:, 0] == labels))
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"top1_accuracy needs scores of shape [rows, classes] or integer labels [rows, 1], "
                         f"got {scores.dtype} {scores.shape}")  # fmt: skip
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def embedding_agreement(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How closely the candidate's embeddings follow the reference ones, row by row (the
    cosines) and in what they are used for (which other row is nearest)."""
    if candidate.shape != reference.shape or candidate.ndim != 2:
        raise ValueError(f"embeddings of shape {candidate.shape} cannot be compared with {reference.shape}")
    if candidate.shape[0] < 2:
        raise ValueError("retrieval agreement needs at least 2 rows")
    cosines = _row_cosines(candidate, reference)
    agree = _nearest_other(_unit_rows(candidate)) == _nearest_other(_unit_rows(reference))
    return {
        "min_cosine": float(cosines.min()),
        "mean_cosine": float(cosines.mean()),
        "retrieval_top1_agreement": float(np.mean(agree)),
    }


def _row_cosines(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine of each row with its reference row, in float64 (an FP16 output compared in FP16
    would add its own rounding to what is measured). Written as a.b / sqrt(|a|^2 |b|^2) so
    that a row equal to its reference gives exactly 1.0 (sqrt(x^2) is x in IEEE arithmetic),
    which is what the parent measures against its own outputs: the gate then compares with
    1.0, not with 0.9999999999999998. A zero row has cosine 0 with anything."""
    ours, theirs = np.asarray(candidate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    dots = np.sum(ours * theirs, axis=1)
    lengths = np.sqrt(np.sum(ours * ours, axis=1) * np.sum(theirs * theirs, axis=1))
    cosines = np.divide(dots, lengths, out=np.zeros_like(dots), where=lengths > 0)
    return np.clip(cosines, -1.0, 1.0)


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, in float64; a zero row stays zero (similar to nothing)."""
    rows = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def _nearest_other(unit: np.ndarray) -> np.ndarray:
    """For each row, the index of the most similar other row by cosine, computed in blocks."""
    count = unit.shape[0]
    step = max(1, _BLOCK_ELEMENTS // count)
    nearest = np.empty(count, dtype=np.int64)
    for start in range(0, count, step):
        block = unit[start : start + step] @ unit.T
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = -np.inf  # a row is not its own neighbour
        nearest[start : start + step] = np.argmax(block, axis=1)
    return nearest
