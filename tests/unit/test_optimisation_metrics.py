"""The validation-set parser, the metrics and the gate's arithmetic (issue 15), on arrays
small enough to check by hand."""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from appliance.catalog.generative import SIGNATURE as GENERATIVE_SIGNATURE
from appliance.optimisation import metrics
from appliance.optimisation.gate import verdict
from appliance.optimisation.validation_data import (
    ValidationSetError,
    check_against_signature,
    metric_refusal,
    parse_validation_set,
)
from triton_models.smollm2 import validation as smollm2_sets


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def classifier_set(rows: int = 6, **extra: Any) -> dict[str, Any]:
    return {"input.x": np.zeros((rows, 4), np.float32), "expected.scores": np.arange(rows) % 3, **extra}


SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "dims": [-1, 4]}],
    "outputs": [{"name": "scores", "datatype": "FP32", "dims": [3]}],
}


# --- the validation set ------------------------------------------------------------------


def test_a_classifier_set_parses_into_read_only_arrays() -> None:
    data = parse_validation_set(npz(**classifier_set()), metric="top1_accuracy")

    assert data.rows == 6
    assert list(data.inputs) == ["x"] and data.inputs["x"].shape == (6, 4)
    assert data.expected["scores"].tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match="read-only"):
        data.inputs["x"][0, 0] = 1.0


def test_an_embedding_set_parses_uncompressed_too() -> None:
    buffer = io.BytesIO()
    arrays = {"input.ids": np.ones((3, 5), np.int64), "input.mask": np.ones((3, 5), np.int64),
              "expected.embedding": np.eye(3, 8, dtype=np.float32)}  # fmt: skip
    np.savez(buffer, **arrays)

    data = parse_validation_set(buffer.getvalue(), metric="embedding_agreement")

    assert sorted(data.inputs) == ["ids", "mask"] and data.expected["embedding"].shape == (3, 8)


def single_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    return buffer.getvalue()


def zip_with(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, content)
    return buffer.getvalue()


def claimed_huge() -> bytes:
    """An archive whose header claims 16 GiB of float64 and holds no data at all: refused
    from the header, before anything is allocated."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1000, 2**21)})
    labels = io.BytesIO()
    np.save(labels, np.zeros(1000, np.int64))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("input.x.npy", header.getvalue())
        archive.writestr("expected.y.npy", labels.getvalue())
    return buffer.getvalue()


BAD_FILES: list[tuple[str, Callable[[], bytes], str, str]] = [
    ("empty", lambda: b"", "top1_accuracy", "is not a NumPy .npz archive"),
    ("text", lambda: b"label,x\n1,2\n", "top1_accuracy", "is not a NumPy .npz archive"),
    ("npy", single_npy, "top1_accuracy", "is a single .npy array"),
    ("damaged zip", lambda: npz(**classifier_set())[:60], "top1_accuracy", "not a readable"),
    ("not an array", lambda: zip_with("notes.txt", b"hello"), "top1_accuracy", "'notes.txt', which is not a NumPy"),
    ("pickled objects",
     lambda: npz(**classifier_set(**{"input.x": np.array([{"a": 1}] * 6, dtype=object)})),
     "top1_accuracy", "'input.x' holds Python objects"),
    ("strings", lambda: npz(**classifier_set(**{"input.x": np.array(["a"] * 6)})), "top1_accuracy",
     "'input.x' holds strings"),
    ("complex", lambda: npz(**classifier_set(**{"input.x": np.zeros(6, np.complex64)})), "top1_accuracy",
     "holds complex numbers"),
    ("scalar", lambda: npz(**classifier_set(**{"input.x": np.float32(1)})), "top1_accuracy", "'input.x' is a scalar"),
    ("no inputs", lambda: npz(**{"expected.scores": np.arange(3)}), "top1_accuracy", "no input.<tensor> array"),
    ("no expected", lambda: npz(**{"input.x": np.zeros((3, 4))}), "top1_accuracy", "no expected.<tensor> array"),
    ("two expected", lambda: npz(**classifier_set(**{"expected.other": np.arange(6)})), "top1_accuracy",
     "2 expected arrays (expected.other, expected.scores)"),
    ("unknown prefix", lambda: npz(**classifier_set(**{"output.scores": np.arange(6)})), "top1_accuracy",
     "'output.scores' has an unknown name"),
    ("empty tensor name", lambda: npz(**classifier_set(**{"input.": np.arange(6)})), "top1_accuracy",
     "'input.' has an unknown name"),
    ("rows differ", lambda: npz(**classifier_set(**{"expected.scores": np.arange(5)})), "top1_accuracy",
     "row counts differ: expected.scores has 5 rows, input.x has 6"),
    ("zero rows", lambda: npz(**classifier_set(rows=0)), "top1_accuracy", "has zero rows"),
    ("too many rows",
     lambda: npz(**{"input.x": np.zeros((100_001, 1), np.uint8), "expected.y": np.zeros(100_001, np.uint8)}),
     "top1_accuracy", "100,001 rows; at most 100,000"),
    ("huge once decompressed", claimed_huge, "top1_accuracy", "take 15.6 GiB once decompressed"),
    ("float labels", lambda: npz(**classifier_set(**{"expected.scores": np.zeros(6)})), "top1_accuracy",
     "expected.scores must hold integer class labels of shape [rows] for top1_accuracy; it is float64"),
    ("2-D labels", lambda: npz(**classifier_set(**{"expected.scores": np.zeros((6, 3), np.int64)})),
     "top1_accuracy", "integer class labels of shape [rows]"),
    ("negative labels", lambda: npz(**classifier_set(**{"expected.scores": np.array([0, 1, -1, 0, 1, 2])})),
     "top1_accuracy", "negative class labels (smallest -1)"),
    ("labels for embeddings", lambda: npz(**classifier_set()), "embedding_agreement",
     "float reference embeddings of shape [rows, dim]"),
    ("integer embeddings", lambda: npz(**classifier_set(**{"expected.scores": np.zeros((6, 3), np.int32)})),
     "embedding_agreement", "float reference embeddings"),
    ("one embedding row", lambda: npz(**classifier_set(rows=1, **{"expected.scores": np.zeros((1, 3))})),
     "embedding_agreement", "at least 2 rows"),
    ("NaN embedding",
     lambda: npz(**classifier_set(**{"expected.scores": np.where(np.eye(6, 3) > 0, np.nan, 1.0)})),
     "embedding_agreement", "NaN or infinite"),
    ("unknown metric", lambda: npz(**classifier_set()), "top5_accuracy", "'top5_accuracy' is not one of"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "metric", "message"), [case[1:] for case in BAD_FILES],
                         ids=[case[0] for case in BAD_FILES])  # fmt: skip
def test_a_bad_file_is_refused_with_its_reason(build: Callable[[], bytes], metric: str, message: str) -> None:
    with pytest.raises(ValidationSetError) as refused:
        parse_validation_set(build(), metric=metric)

    assert message in str(refused.value)
    assert isinstance(refused.value, ValueError)


def test_the_set_must_fit_the_signature() -> None:
    ok = parse_validation_set(npz(**classifier_set(**{"input.x": np.zeros((6, 9, 4), np.float32)})),
                              metric="top1_accuracy")  # fmt: skip
    check_against_signature(ok, SIGNATURE)  # -1 matches 9

    cases = [
        ({"input.x": np.zeros((6, 9, 5), np.float32)}, "input.x has shape (6, 9, 5): after the rows the model takes dims [-1, 4]"),
        ({"input.x": np.zeros((6, 4), np.float32)}, "input.x has shape (6, 4)"),
        ({"input.x": np.zeros((6, 9, 4))}, "input.x is float64 but the model's input is FP32: save it with .astype(np.float32)"),
        ({"input.y": np.zeros((6, 9, 4), np.float32)}, "input.y names no input of the model (its inputs: x)"),
        ({"expected.logits": np.arange(6), "expected.scores": None}, "expected.logits names no output of the model (its outputs: scores)"),
    ]  # fmt: skip
    for changes, message in cases:
        arrays = {**classifier_set(**{"input.x": np.zeros((6, 9, 4), np.float32)}), **changes}
        data = parse_validation_set(npz(**{k: v for k, v in arrays.items() if v is not None}), metric="top1_accuracy")
        with pytest.raises(ValidationSetError, match="^" + re.escape(message)):
            check_against_signature(data, SIGNATURE)

    two_inputs = {**SIGNATURE, "inputs": [*SIGNATURE["inputs"], {"name": "mask", "datatype": "INT64", "dims": [4]}]}
    with pytest.raises(ValidationSetError, match="the model's input.s. mask have no array: add input.mask"):
        check_against_signature(ok, two_inputs)


# --- metrics --------------------------------------------------------------------------------


def test_top1_accuracy_is_the_fraction_of_rows_whose_argmax_is_the_label() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)

    values = metrics.measure("top1_accuracy", {"scores": scores, "other": scores}, {"scores": np.array([1, 0, 0, 0])})

    assert values == {"top1_accuracy": 0.75}


def test_a_label_output_is_compared_as_it_is_and_one_float_column_is_refused() -> None:
    labels = np.array([[3], [1], [4], [1]], np.int32)

    assert metrics.measure("top1_accuracy", {"LABEL": labels}, {"LABEL": np.array([3, 1, 4, 5])}) == {"top1_accuracy": 0.75}
    with pytest.raises(ValueError, match="scores of shape .rows, classes. or integer labels"):
        metrics.measure("top1_accuracy", {"p": np.ones((4, 1), np.float32)}, {"p": np.array([0, 0, 0, 0])})


def test_embedding_agreement_by_hand() -> None:
    reference = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    candidate = np.array([[2, 0], [0, 1], [1, 0]], np.float32)  # row 2 turned by 45 degrees

    values = metrics.measure("embedding_agreement", {"e": candidate}, {"e": reference})

    # Cosines 1, 1, 1/sqrt(2). Nearest other row: reference 2, 2, 0 (a tie: the first wins);
    # candidate 2, 0 (a tie), 0; rows 0 and 2 agree.
    assert values["min_cosine"] == pytest.approx(1 / math.sqrt(2))
    assert values["mean_cosine"] == pytest.approx((2 + 1 / math.sqrt(2)) / 3)
    assert values["retrieval_top1_agreement"] == pytest.approx(2 / 3)


def test_a_zero_embedding_has_cosine_zero_and_a_model_agrees_with_itself() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(50, 8)).astype(np.float32)
    broken = reference.copy()
    broken[7] = 0

    assert metrics.measure("embedding_agreement", {"e": broken}, {"e": reference})["min_cosine"] == 0.0
    same = metrics.measure("embedding_agreement", {"e": reference}, {"e": reference})
    assert same == {"min_cosine": 1.0, "mean_cosine": pytest.approx(1.0), "retrieval_top1_agreement": 1.0}


def test_retrieval_in_blocks_equals_the_full_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(97, 6))
    candidate = reference + rng.normal(scale=0.4, size=reference.shape)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 97 * 10)  # 10 rows a block, the last one short

    blocked = metrics.measure("embedding_agreement", {"e": candidate}, {"e": reference})

    def nearest(e: np.ndarray) -> np.ndarray:
        unit = e / np.linalg.norm(e, axis=1, keepdims=True)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argmax(similarity, axis=1)

    expected = float(np.mean(nearest(candidate) == nearest(reference)))
    assert blocked["retrieval_top1_agreement"] == pytest.approx(expected)
    assert 0.2 < expected < 0.95  # the noise moved some neighbours and not others


def test_measure_refuses_outputs_it_cannot_judge() -> None:
    labels = {"scores": np.array([0, 1])}
    with pytest.raises(ValueError, match="no output 'scores'"):
        metrics.measure("top1_accuracy", {"logits": np.zeros((2, 3))}, labels)
    with pytest.raises(ValueError, match="3 rows, the expected array 2"):
        metrics.measure("top1_accuracy", {"scores": np.zeros((3, 3))}, labels)
    with pytest.raises(ValueError, match=r"shape \[rows, classes\]"):
        metrics.measure("top1_accuracy", {"scores": np.zeros(2)}, labels)
    with pytest.raises(ValueError, match="is not one of"):
        metrics.measure("bleu", {"scores": np.zeros((2, 3))}, labels)


# --- the gate -------------------------------------------------------------------------------


def test_the_threshold_is_inclusive_and_exact() -> None:
    # 1.0 x (1 - 0.25) = 0.75 exactly in binary floating point, so "at" is really at.
    at = verdict("top1_accuracy", {"top1_accuracy": 0.75}, {"top1_accuracy": 1.0}, max_relative_drop=0.25)
    below = verdict("top1_accuracy", {"top1_accuracy": float(np.nextafter(0.75, 0))}, {"top1_accuracy": 1.0}, 0.25)
    above = verdict("top1_accuracy", {"top1_accuracy": 0.8}, {"top1_accuracy": 1.0}, 0.25)

    assert at.passed and not below.passed and above.passed
    assert at.checks[0].threshold == 0.75 and at.checks[0].baseline == 1.0
    assert at.reason() == ""


def test_no_drop_allowed_means_no_worse_than_the_parent() -> None:
    parent = {"top1_accuracy": 0.9}
    assert verdict("top1_accuracy", {"top1_accuracy": 0.9}, parent, 0.0).passed
    assert not verdict("top1_accuracy", {"top1_accuracy": 0.8999}, parent, 0.0).passed
    assert verdict("top1_accuracy", {"top1_accuracy": 0.95}, parent, 0.0).passed


def test_embeddings_are_gated_on_min_cosine_and_retrieval_but_not_the_mean() -> None:
    parent = {"min_cosine": 1.0, "mean_cosine": 1.0, "retrieval_top1_agreement": 1.0}
    candidate = {"min_cosine": 0.958, "mean_cosine": 0.2, "retrieval_top1_agreement": 0.995}

    result = verdict("embedding_agreement", candidate, parent)

    assert not result.passed
    assert [(c.name, c.passed) for c in result.checks] == [("min_cosine", False), ("retrieval_top1_agreement", True)]
    assert result.reason() == "min_cosine 0.958 < 0.990 required (parent 1.000, max relative drop 1.0%)"
    assert json.loads(json.dumps(result.as_dict()))["checks"][0] == {
        "name": "min_cosine", "measured": 0.958, "baseline": 1.0, "threshold": 0.99, "passed": False,
        "higher_is_better": True,
    }  # fmt: skip


def test_every_failing_check_gets_a_line() -> None:
    parent = {"min_cosine": 0.98, "retrieval_top1_agreement": 0.5}
    candidate = {"min_cosine": 0.5, "retrieval_top1_agreement": 0.25}

    lines = verdict("embedding_agreement", candidate, parent, 0.1).reason().splitlines()

    assert lines == [
        "min_cosine 0.500 < 0.882 required (parent 0.980, max relative drop 10.0%)",
        "retrieval_top1_agreement 0.250 < 0.450 required (parent 0.500, max relative drop 10.0%)",
    ]


def test_nan_never_passes_and_bad_arguments_are_refused() -> None:
    assert not verdict("top1_accuracy", {"top1_accuracy": math.nan}, {"top1_accuracy": 0.5}).passed
    for drop in (1.0, -0.01, 1.5):
        with pytest.raises(ValueError, match=r"max_relative_drop must be in \[0, 1\)"):
            verdict("top1_accuracy", {"top1_accuracy": 1.0}, {"top1_accuracy": 1.0}, drop)
    with pytest.raises(ValueError, match="the candidate's values lack 'min_cosine'"):
        verdict("embedding_agreement", {"retrieval_top1_agreement": 1.0}, {"min_cosine": 1.0})
    with pytest.raises(ValueError, match="is not one of"):
        verdict("f1", {}, {})


def test_a_negative_parent_value_keeps_the_parent_passing() -> None:
    parent = {"min_cosine": -0.5, "retrieval_top1_agreement": 1.0}
    assert verdict("embedding_agreement", parent, parent, 0.1).passed
    assert verdict("embedding_agreement", parent, parent, 0.1).checks[0].threshold == pytest.approx(-0.55)



# --- generative sets and their gate (text in, text out) ------------------------------------


def text_set(prompts: Any = ("Q1", "Q2", "Q3"), answers: Any = ("A1", "A2", "A3"), **extra: Any) -> dict[str, Any]:
    return {"input.text_input": np.array(prompts), "expected.text_output": np.array(answers), **extra}


def test_a_generative_set_holds_prompts_and_reference_answers_as_strings() -> None:
    for metric in ("exact_match", "perplexity"):
        data = parse_validation_set(smollm2_sets.perplexity_set(), metric=metric)
        check_against_signature(data, GENERATIVE_SIGNATURE)  # the optional inputs may be left out

        assert data.rows == len(smollm2_sets.FACTS)
        assert data.inputs["text_input"][0].startswith("<|im_start|>system") and data.inputs["text_input"].dtype.kind == "U"
        assert str(data.expected["text_output"][0]) == "The capital of France is Paris."
    # An empty answer is one an exact match can expect (the parent said nothing); perplexity has no token to judge.
    assert parse_validation_set(npz(**text_set(answers=("A1", "", "A3"))), metric="exact_match").rows == 3


BAD_TEXT_SETS: list[tuple[str, dict[str, Any], str, str]] = [
    ("numbers for text", {"input.text_input": np.zeros(3)}, "exact_match",
     "input.text_input must be a string array of shape [rows] (np.array of str); it is float64"),
    ("2-D prompts", {"input.text_input": np.array([["a", "b"]] * 3)}, "perplexity", "must be a string array of shape [rows]"),
    ("another tensor", {"input.stream": np.ones(3, bool)}, "exact_match",
     "holds exactly input.text_input (the prompts) and expected.text_output (the reference answers); this one holds "
     "expected.text_output, input.stream, input.text_input"),
    ("no answers", {"expected.text_output": None, "expected.answer": np.array(["a"] * 3)}, "exact_match",
     "holds exactly input.text_input"),
    ("pickled prompts", {"input.text_input": np.array(["a", 1, None], dtype=object)}, "exact_match",
     "'input.text_input' holds Python objects (it would need unpickling); only numeric arrays and, for text, Unicode"),
    ("byte strings", {"input.text_input": np.array([b"a"] * 3)}, "exact_match", "'input.text_input' holds byte strings"),
    ("empty prompt", {"input.text_input": np.array(["Q1", "  ", "Q3"])}, "exact_match",
     "input.text_input row 1 is empty: every row needs a prompt"),
    ("empty answer", {"expected.text_output": np.array(["A1", "A2", ""])}, "perplexity",
     "expected.text_output row 2 is empty: perplexity is measured on the reference answer's tokens"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "metric", "message"), [case[1:] for case in BAD_TEXT_SETS],
                         ids=[case[0] for case in BAD_TEXT_SETS])  # fmt: skip
def test_a_bad_generative_set_is_refused_with_its_reason(changes: dict[str, Any], metric: str, message: str) -> None:
    arrays = {k: v for k, v in {**text_set(), **changes}.items() if v is not None}
    with pytest.raises(ValidationSetError) as refused:
        parse_validation_set(npz(**arrays), metric=metric)

    assert message in str(refused.value)


def test_a_metric_applies_to_its_kind_of_model_only() -> None:
    assert metric_refusal("perplexity", "vllm") == "" and metric_refusal("top1_accuracy", "onnx") == ""
    assert metric_refusal("top1_accuracy", "vllm") == ("top1_accuracy judges tensor outputs; a generative (vllm) model "
                                                       "is judged on text: exact_match or perplexity")  # fmt: skip
    assert metric_refusal("exact_match", "onnx") == "exact_match judges generative (vllm) models; this model's versions are onnx"
    # A tensor set against a generative signature is refused by the signature too, in the set's terms.
    data = parse_validation_set(npz(**{"input.text_input": np.zeros((3, 1), np.uint8), "expected.text_output": np.arange(3)}),
                                metric="top1_accuracy")  # fmt: skip
    with pytest.raises(ValidationSetError, match=re.escape("input.text_input must be one string per row (shape [rows])")):
        check_against_signature(data, GENERATIVE_SIGNATURE)


def test_perplexity_is_gated_from_above() -> None:
    parent = {"perplexity": 10.0, "answer_tokens": 40.0}
    at = verdict("perplexity", {"perplexity": 10.1, "answer_tokens": 40.0}, parent, 0.01)
    worse = verdict("perplexity", {"perplexity": 12.0, "answer_tokens": 40.0}, parent, 0.01)
    better = verdict("perplexity", {"perplexity": 3.0, "answer_tokens": 40.0}, parent, 0.01)

    assert at.checks[0].threshold == pytest.approx(10.1) and at.checks[0].higher_is_better is False
    assert verdict("perplexity", {"perplexity": at.checks[0].threshold}, parent, 0.01).passed  # inclusive
    assert not worse.passed and better.passed
    assert [c.name for c in worse.checks] == ["perplexity"]  # the token count is reported, not gated
    assert worse.reason() == "perplexity 12.000 > 10.100 allowed (parent 10.000, max relative rise 1.0%)"
    assert worse.as_dict()["checks"][0]["higher_is_better"] is False
    for broken in (math.inf, math.nan):
        assert not verdict("perplexity", {"perplexity": broken}, parent, 0.5).passed


def test_exact_match_is_gated_like_accuracy() -> None:
    parent = {"exact_match": 0.75}
    assert verdict("exact_match", {"exact_match": 0.75}, parent, 0.0).passed
    failed = verdict("exact_match", {"exact_match": 0.5}, parent, 0.1)
    assert not failed.passed
    assert failed.reason() == "exact_match 0.500 < 0.675 required (parent 0.750, max relative drop 10.0%)"
