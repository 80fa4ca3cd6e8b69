"""Protobuf details of the KServe v2 / Triton gRPC protocol the gateway relies on
(native/wire.cc is the native front's twin)."""

from __future__ import annotations

from collections.abc import Iterator

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


def _read_varint(raw: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if at >= len(raw):
            raise ValueError("truncated varint")
        byte = raw[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    raise ValueError("varint too long")


def _fields(raw: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(field number, where the field starts, where its payload starts, where it ends) of each
    top-level field. Raises ValueError if `raw` is not well-formed protobuf at its top level."""
    at = 0
    while at < len(raw):
        start = at
        tag, at = _read_varint(raw, at)
        field, wire = tag >> 3, tag & 7
        if field == 0 or field > 0x1FFFFFFF:
            raise ValueError("bad field number")
        body = at
        if wire == 0:
            _, at = _read_varint(raw, at)
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == 2:
            length, body = _read_varint(raw, at)
            at = body + length
        else:
            raise ValueError(f"wire type {wire} is not used by the inference protocol")
        if at > len(raw):
            raise ValueError("truncated field")
        yield field, start, body, at


def content_of(raw: bytes) -> bytes:
    """The message without its fields 2 (version) and 3 (id), other fields as they came: what
    the exact response cache's key hashes, in both planes. Raises ValueError if `raw` is not
    well-formed protobuf at its top level."""
    return b"".join(raw[start:end] for field, start, _, end in _fields(raw) if field not in (2, 3))


def stream_error(raw: bytes) -> bool:
    """Does a ModelStreamInferResponse carry an error (field 1, `error_message`, not empty)?
    Read from its top-level fields, without parsing the response (a malformed one: no)."""
    try:
        return any(field == 1 and end > body for field, _, body, end in _fields(raw))
    except ValueError:
        return False


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
