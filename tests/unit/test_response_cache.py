"""Cache keys never cross tenants or versions, and ignore what does not change the answer."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2 as pb

from appliance.gateway.cache import ResponseCache
from appliance.policies.engine import PlaceFacts, RuleFacts, TenantFacts, evaluate


def _request(value: bytes, request_id: str = "a", version: str = "") -> bytes:
    request = pb.ModelInferRequest(model_name="digits", model_version=version, id=request_id)
    tensor = request.inputs.add(name="IMAGE", datatype="FP32", shape=[1, 64])
    assert tensor is not None
    request.raw_input_contents.append(value)
    return request.SerializeToString()


def test_keys_are_scoped_by_tenant_model_version_and_inputs() -> None:
    cache = ResponseCache()
    base = cache.key("t1", "digits", "3", _request(b"x" * 256))
    assert base == cache.key("t1", "digits", "3", _request(b"x" * 256, request_id="other", version="3"))
    assert base != cache.key("t2", "digits", "3", _request(b"x" * 256))
    assert base != cache.key("t1", "digits", "4", _request(b"x" * 256))
    assert base != cache.key("t1", "digits", "3", _request(b"y" * 256))
    # What a client appended after the inputs (the version, the id) still changes nothing.
    assert base == cache.key("t1", "digits", "3", _request(b"x" * 256) + b"\x12\x015" + b"\x1a\x02zz")


def test_a_malformed_request_has_no_key() -> None:
    with pytest.raises(ValueError):
        ResponseCache().key("t1", "digits", "3", b"\x0a\x05dig")  # a field longer than the message


@pytest.mark.parametrize(
    ("classification", "zone", "allowed"),
    [("internal", "dc1", True), ("public", "dmz", True), ("confidential", "dc1", False), ("restricted", "dc1", False)],
)
def test_what_may_be_cached_is_the_policy_s_call(classification: str, zone: str, allowed: bool) -> None:
    rules = [RuleFacts(10, "confidential-cache-dc1", "allow", operations=("cache",), classifications=("confidential",),
                       zones=("dc2",))]  # fmt: skip
    decision = evaluate(rules, TenantFacts("t", classification), PlaceFacts("the cache store", zone), "cache")
    assert decision.allowed is allowed
