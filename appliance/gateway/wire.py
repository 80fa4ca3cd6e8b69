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
