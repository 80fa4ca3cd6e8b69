"""Protobuf details of the KServe v2 / Triton gRPC protocol the gateway relies on."""

from __future__ import annotations

SERVICE = "inference.GRPCInferenceService"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def with_version(raw: bytes, version: str) -> bytes:
    """Sets field 2 (the version in ModelInferRequest, ModelReadyRequest,
    ModelMetadataRequest and ModelConfigRequest) without re-serialising: for a
    proto3 scalar the last occurrence on the wire wins, so appending is enough."""
    encoded = version.encode()
    return raw + b"\x12" + _varint(len(encoded)) + encoded


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def with_priority(raw: bytes, level: int) -> bytes:
    """Sets ModelInferRequest.parameters["priority"] (field 4, a map: the last entry for
    a key on the wire wins) to InferParameter{uint64_param (field 5): level}, as
    tritonclient itself sends it."""
    value = _varint(5 << 3 | 0) + _varint(level)
    entry = _field(1, b"priority") + _field(2, value)
    return raw + _field(4, entry)
