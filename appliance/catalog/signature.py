"""Validation of a model version's input/output signature."""

from __future__ import annotations

import re
from typing import Any

from appliance.catalog.choices import TRITON_DATATYPES
from appliance.core.errors import DomainError

_TENSOR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")


class SignatureError(DomainError):
    """The signature cannot describe a Triton model."""


def _tensor(entry: Any, where: str, *, side: str = "inputs") -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise SignatureError(f"{where}: expected an object with name, datatype and dims")
    # An input may be optional (Triton's `optional: true`: a request may leave it out).
    unknown = set(entry) - {"name", "datatype", "dims", *(("optional",) if side == "inputs" else ())}
    if unknown:
        raise SignatureError(f"{where}: unknown keys {sorted(unknown)}")
    name = entry.get("name")
    if not isinstance(name, str) or not _TENSOR_NAME.match(name):
        raise SignatureError(f"{where}: name {name!r} is not a valid tensor name")
    datatype = entry.get("datatype")
    if datatype not in TRITON_DATATYPES:
        raise SignatureError(f"{where} ({name}): datatype {datatype!r} is not one of {', '.join(TRITON_DATATYPES)}")
    dims = entry.get("dims")
    if (
        not isinstance(dims, list)
        or not dims
        or not all(isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d > 0) for d in dims)
    ):
        raise SignatureError(f"{where} ({name}): dims must be a non-empty list of positive integers or -1")
    tensor = {"name": name, "datatype": datatype, "dims": list(dims)}
    optional = entry.get("optional", False)
    if not isinstance(optional, bool):
        raise SignatureError(f"{where} ({name}): optional must be true or false")
    if optional:
        tensor["optional"] = True
    return tensor


def validate_signature(signature: Any) -> dict[str, list[dict[str, Any]]]:
    """Returns the normalised signature or raises SignatureError naming the problem."""
    if not isinstance(signature, dict):
        raise SignatureError("signature: expected an object with 'inputs' and 'outputs'")
    unknown = set(signature) - {"inputs", "outputs"}
    if unknown:
        raise SignatureError(f"signature: unknown keys {sorted(unknown)}")
    result: dict[str, list[dict[str, Any]]] = {}
    for side in ("inputs", "outputs"):
        entries = signature.get(side)
        if not isinstance(entries, list) or not entries:
            raise SignatureError(f"signature.{side}: expected a non-empty list")
        tensors = [_tensor(entry, f"signature.{side}[{i}]", side=side) for i, entry in enumerate(entries)]
        names = [t["name"] for t in tensors]
        if len(set(names)) != len(names):
            raise SignatureError(f"signature.{side}: tensor names must be unique")
        result[side] = tensors
    return result


def validate_samples(samples: Any, signature: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Stored sample inputs: one sample per input (no batch dimension), with exactly
    as many values as the input's fixed dims hold, of a type its datatype takes."""
    if samples is None:
        return None
    if not isinstance(samples, dict):
        raise SignatureError("sample_inputs: expected an object mapping input names to values")
    inputs = {t["name"]: t for t in signature["inputs"]}
    if set(samples) != set(inputs):
        raise SignatureError(f"sample_inputs: give exactly the inputs {sorted(inputs)}, got {sorted(samples)}")
    import numpy as np
    from tritonclient.utils import triton_to_np_dtype

    for name, values in samples.items():
        tensor = inputs[name]
        if tensor["datatype"] == "BYTES" or -1 in tensor["dims"]:
            raise SignatureError(f"sample_inputs.{name}: samples are supported for fixed-size numeric inputs only")
        try:
            array = np.asarray(values, dtype=triton_to_np_dtype(tensor["datatype"]))
        except (TypeError, ValueError) as exc:
            raise SignatureError(f"sample_inputs.{name}: values are not {tensor['datatype']}: {exc}") from exc
        expected = int(np.prod(tensor["dims"]))
        if array.size != expected:
            raise SignatureError(f"sample_inputs.{name}: {array.size} values for dims {tensor['dims']} ({expected} expected)")
    return dict(samples)
