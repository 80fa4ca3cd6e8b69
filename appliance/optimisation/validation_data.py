"""The validation set: the rows a candidate model is judged on, and their checks.

An operator uploads one NumPy `.npz` archive (`np.savez` or `np.savez_compressed`)
holding, for N rows:

- `input.<TENSOR>`: one array per model input, rows first (shape [N, *dims]);
- `expected.<TENSOR>`: what the metric compares the output `<TENSOR>` against:
  for `top1_accuracy` integer class labels of shape [N]; for `embedding_agreement`
  reference embeddings of shape [N, D], normally the FP32 parent's own outputs.

Generative (vllm) models are judged on text: `input.text_input` holds the N prompts
exactly as a client sends them (chat template applied) and `expected.text_output` the
N reference answers, both NumPy string arrays of shape [N] (`np.array([...])`, dtype
`<U…`: stored without pickling). `exact_match` is the share of rows whose greedy answer
is the reference (normally the parent's own greedy answers); `perplexity` is the
model's perplexity on the reference answers given their prompts (lower is better).

The archive is read without unpickling anything: each array's header (dtype and
shape) is checked before its data is decompressed, so an object array is refused
unread and a small compressed file cannot expand into a huge one unnoticed.
Every refusal names the array and what was wrong with it, because the operator
who reads it has only the file they built to go on.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from appliance.core.errors import DomainError

# Metrics of tensor models (ONNX) and of generative models (text in, text out).
TENSOR_METRICS = ("top1_accuracy", "embedding_agreement")
GENERATIVE_METRICS = ("exact_match", "perplexity")
METRICS = TENSOR_METRICS + GENERATIVE_METRICS
# The tensors of a generative validation set (Triton's vLLM backend's names).
TEXT_INPUT, TEXT_OUTPUT = "text_input", "text_output"
MAX_ROWS = 100_000
# What the arrays may take once decompressed; well above 100,000 rows of a 512x512 image
# in FP16 would be refused, which is the point: a validation set is for judging, not training.
MAX_BYTES = 2 * 1024**3

_INPUT, _EXPECTED = "input.", "expected."
# Numeric kinds only, and Unicode strings for the generative metrics' text: objects would
# need unpickling, and structured, complex and datetime arrays map to no tensor we serve.
_KIND_REFUSALS = {
    "O": "holds Python objects (it would need unpickling)",
    "U": "holds strings",
    "S": "holds byte strings",
    "V": "is a structured (record) array",
    "c": "holds complex numbers",
    "M": "holds datetimes",
    "m": "holds timedeltas",
}
_TRITON_TO_NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip


class ValidationSetError(DomainError):
    """The validation set cannot be used to judge a candidate; the message says why."""


@dataclass(frozen=True)
class ValidationData:
    """A parsed validation set: arrays by tensor name (read-only), all with `rows` rows."""

    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    rows: int


def parse_validation_set(data: bytes, *, metric: str) -> ValidationData:
    """Parses an uploaded `.npz` validation set for `metric`, or raises ValidationSetError."""
    if metric not in METRICS:
        raise ValidationSetError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    archive = _open_archive(data)
    with archive:
        headers = {name: _header(archive, member, text=metric in GENERATIVE_METRICS) for member, name in _members(archive)}
        _check_names(headers)
        rows = _check_rows(headers)
        if metric in GENERATIVE_METRICS:
            _check_text_headers(headers)
        else:
            _check_expected_header(headers, metric)
        arrays = {name: _read(archive, name) for name in headers}
    inputs = {name[len(_INPUT) :]: array for name, array in arrays.items() if name.startswith(_INPUT)}
    expected = {name[len(_EXPECTED) :]: array for name, array in arrays.items() if name.startswith(_EXPECTED)}
    if metric in GENERATIVE_METRICS:
        _check_texts(inputs[TEXT_INPUT], expected[TEXT_OUTPUT], metric)
    else:
        _check_expected_values(expected, metric)
    return ValidationData(inputs=inputs, expected=expected, rows=rows)


def metric_refusal(metric: str, fmt: str) -> str:
    """Why `metric` cannot judge versions of format `fmt` ('' when it can): text metrics are for
    generative (vllm) models, and a generative model is judged on text."""
    if fmt == "vllm" and metric not in GENERATIVE_METRICS:
        return (f"{metric} judges tensor outputs; a generative (vllm) model is judged on text: "
                f"{' or '.join(GENERATIVE_METRICS)}")  # fmt: skip
    if fmt != "vllm" and metric in GENERATIVE_METRICS:
        return f"{metric} judges generative (vllm) models; this model's versions are {fmt}"
    return ""


def check_against_signature(data: ValidationData, signature: dict[str, Any]) -> None:
    """Checks that the set fits the model: every input of the signature is present with
    its datatype and its dims after the rows (-1 matches any size), no input is extra, and
    each expected array names an output. Run before any inference, so that a mismatch is
    reported in the set's terms rather than as an ONNX Runtime error halfway through."""
    entries = {entry["name"]: entry for entry in signature.get("inputs", [])}
    # An optional input (a generative model's sampling parameters, flags) may be left out.
    wanted = {name: entry for name, entry in entries.items() if name in data.inputs or not entry.get("optional")}
    missing = sorted(set(wanted) - set(data.inputs))
    if missing:
        raise ValidationSetError(f"the model's input(s) {', '.join(missing)} have no array: add input.{missing[0]}")
    extra = sorted(set(data.inputs) - set(entries))
    if extra:
        raise ValidationSetError(
            f"input.{extra[0]} names no input of the model (its inputs: {', '.join(sorted(entries))})"
        )
    for name, entry in wanted.items():
        _check_tensor(f"input.{name}", data.inputs[name], entry)
    outputs = sorted(entry["name"] for entry in signature.get("outputs", []))
    for name in data.expected:
        if name not in outputs:
            raise ValidationSetError(
                f"expected.{name} names no output of the model (its outputs: {', '.join(outputs)})"
            )


def _check_tensor(label: str, array: np.ndarray, entry: dict[str, Any]) -> None:
    datatype = entry["datatype"]
    if datatype == "BYTES":
        # Text, one string per row: a generative set's prompts (dims [1]: one string per request).
        if array.dtype.kind != "U" or array.ndim != 1 or list(entry["dims"]) not in ([1], [-1]):
            raise ValidationSetError(f"{label} must be one string per row (shape [rows]) for the model's input "
                                     f"{entry['name']} of dims {list(entry['dims'])}; it is {array.dtype} with "
                                     f"shape {tuple(array.shape)}")  # fmt: skip
        return
    dtype = _TRITON_TO_NUMPY.get(datatype)
    if dtype is None:
        raise ValidationSetError(f"the model's input {entry['name']} is {datatype}, which a validation set cannot hold")
    if array.dtype != np.dtype(dtype):
        raise ValidationSetError(
            f"{label} is {array.dtype} but the model's input is {datatype}: save it with .astype(np.{np.dtype(dtype)})"
        )
    dims = list(entry["dims"])
    trailing = list(array.shape[1:])
    if len(trailing) != len(dims) or any(d not in (-1, t) for d, t in zip(dims, trailing, strict=True)):
        raise ValidationSetError(
            f"{label} has shape {tuple(array.shape)}: after the rows the model takes dims {dims} (-1 is any size)"
        )


def _open_archive(data: bytes) -> zipfile.ZipFile:
    # np.load would guess the format and, for anything unrecognised, blame pickling; the magic
    # bytes tell the operator what they actually uploaded.
    if data.startswith(b"\x93NUMPY"):
        raise ValidationSetError(
            "the validation set is a single .npy array; upload an .npz archive (np.savez) "
            "with arrays named input.<tensor> and expected.<tensor>"
        )
    if not data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise ValidationSetError("the validation set is not a NumPy .npz archive (np.savez): it is not a zip file")
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ValidationSetError(f"the validation set is not a readable .npz archive: {error}") from error


def _members(archive: zipfile.ZipFile) -> list[tuple[str, str]]:
    members = []
    for member in archive.namelist():
        if not member.endswith(".npy"):
            raise ValidationSetError(f"the archive holds {member!r}, which is not a NumPy array (.npy)")
        members.append((member, member[: -len(".npy")]))
    if not members:
        raise ValidationSetError("the archive holds no arrays")
    return members


def _header(archive: zipfile.ZipFile, member: str, *, text: bool) -> tuple[tuple[int, ...], np.dtype[Any]]:
    name = member[: -len(".npy")]
    try:
        with archive.open(member) as stream:
            shape, dtype = _read_header(stream)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as error:
        raise ValidationSetError(f"array {name!r} is not a readable NumPy array: {error}") from error
    if text and dtype.kind == "U":
        pass  # Unicode strings are plain fixed-width data (no pickling): a generative set's text
    elif (refusal := _KIND_REFUSALS.get(dtype.kind)) or dtype.kind not in "biuf":
        accepted = "numeric arrays and, for text, Unicode string arrays" if text else "numeric arrays"
        raise ValidationSetError(f"array {name!r} {refusal or f'has dtype {dtype}'}; only {accepted} are accepted")
    if not shape:
        raise ValidationSetError(f"array {name!r} is a scalar; its first dimension must be the rows")
    return shape, dtype


def _read_header(stream: IO[bytes]) -> tuple[tuple[int, ...], np.dtype[Any]]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        # Version 3 only exists for structured dtypes with non-Latin-1 field names: refused anyway.
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    return tuple(shape), dtype


def _check_names(headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> None:
    for name in headers:
        if not name.startswith((_INPUT, _EXPECTED)) or name in (_INPUT, _EXPECTED):
            raise ValidationSetError(
                f"array {name!r} has an unknown name: arrays must be named input.<tensor> or expected.<tensor>"
            )
    if not any(name.startswith(_INPUT) for name in headers):
        raise ValidationSetError("the archive has no input.<tensor> array: one per model input is needed")
    expected = sorted(name for name in headers if name.startswith(_EXPECTED))
    if not expected:
        raise ValidationSetError("the archive has no expected.<tensor> array: the metric has nothing to compare with")
    if len(expected) > 1:
        raise ValidationSetError(
            f"the archive has {len(expected)} expected arrays ({', '.join(expected)}); the metric compares one output"
        )


def _check_rows(headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> int:
    counts = {name: shape[0] for name, (shape, _) in headers.items()}
    first, rows = next(iter(sorted(counts.items())))
    for name, count in sorted(counts.items()):
        if count != rows:
            raise ValidationSetError(f"row counts differ: {first} has {rows} rows, {name} has {count}")
    if rows == 0:
        raise ValidationSetError("the validation set has zero rows")
    if rows > MAX_ROWS:
        raise ValidationSetError(f"the validation set has {rows:,} rows; at most {MAX_ROWS:,} are accepted")
    size = sum(math.prod(shape) * dtype.itemsize for shape, dtype in headers.values())
    if size > MAX_BYTES:
        raise ValidationSetError(
            f"the arrays take {size / 1024**3:.1f} GiB once decompressed; at most {MAX_BYTES / 1024**3:.0f} GiB"
        )
    return rows


def _check_expected_header(headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]], metric: str) -> None:
    name = next(name for name in headers if name.startswith(_EXPECTED))
    shape, dtype = headers[name]
    if metric == "top1_accuracy" and (len(shape) != 1 or dtype.kind not in "iu"):
        raise ValidationSetError(
            f"{name} must hold integer class labels of shape [rows] for top1_accuracy; it is {dtype} with shape {shape}"
        )
    if metric == "embedding_agreement":
        if len(shape) != 2 or dtype.kind != "f" or shape[1] == 0:
            raise ValidationSetError(
                f"{name} must hold float reference embeddings of shape [rows, dim] for embedding_agreement; "
                f"it is {dtype} with shape {shape}"
            )
        if shape[0] < 2:
            raise ValidationSetError(
                "embedding_agreement needs at least 2 rows: retrieval agreement compares each row with the others"
            )


def _check_text_headers(headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> None:
    """A generative set: the prompts and the reference answers, one string per row each."""
    wanted = {_INPUT + TEXT_INPUT, _EXPECTED + TEXT_OUTPUT}
    if set(headers) != wanted:
        raise ValidationSetError(
            f"a generative validation set holds exactly {_INPUT}{TEXT_INPUT} (the prompts) and "
            f"{_EXPECTED}{TEXT_OUTPUT} (the reference answers); this one holds {', '.join(sorted(headers))}"
        )
    for name in sorted(wanted):
        shape, dtype = headers[name]
        if dtype.kind != "U" or len(shape) != 1:
            raise ValidationSetError(f"{name} must be a string array of shape [rows] (np.array of str); "
                                     f"it is {dtype} with shape {shape}")  # fmt: skip


def _check_texts(prompts: np.ndarray, answers: np.ndarray, metric: str) -> None:
    for row, prompt in enumerate(prompts):
        if not str(prompt).strip():
            raise ValidationSetError(f"{_INPUT}{TEXT_INPUT} row {row} is empty: every row needs a prompt")
    if metric == "perplexity":
        for row, answer in enumerate(answers):
            if not str(answer):
                raise ValidationSetError(f"{_EXPECTED}{TEXT_OUTPUT} row {row} is empty: perplexity is measured on "
                                         "the reference answer's tokens, and it has none")  # fmt: skip


def _read(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    try:
        with archive.open(f"{name}.npy") as stream:
            array = np.lib.format.read_array(stream, allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as error:
        raise ValidationSetError(f"array {name!r} is damaged: {error}") from error
    array.setflags(write=False)
    return array


def _check_expected_values(expected: dict[str, np.ndarray], metric: str) -> None:
    ((name, array),) = expected.items()
    if metric == "top1_accuracy" and array.size and int(array.min()) < 0:
        raise ValidationSetError(f"expected.{name} holds negative class labels (smallest {int(array.min())})")
    if metric == "embedding_agreement" and not np.isfinite(array).all():
        raise ValidationSetError(f"expected.{name} holds NaN or infinite values")
