"""The autoscaling policy (pure) and its bounds."""

from __future__ import annotations

import pytest
from rest_framework.exceptions import ValidationError

from appliance.rollouts.autoscale import Sample, decide, normalise_autoscale

POLICY = normalise_autoscale({"min_replicas": 1, "max_replicas": 3, "cooldown_s": 30})


def _s(queue_ms: float, utilisation: float, node: str = "n") -> Sample:
    return Sample(node=node, seconds=1.0, requests=100, queue_ms=queue_ms, utilisation=utilisation)


@pytest.mark.parametrize(
    ("replicas", "samples", "since", "wanted", "why"),
    [
        (1, [_s(12.0, 0.3)], 60, 2, "queue 12.0 ms > 5 ms"),
        (1, [_s(0.5, 0.9)], 60, 2, "utilisation 90% > 70%"),
        (3, [_s(50.0, 1.0)], 60, 3, "within bounds"),  # at max: stays
        (2, [_s(0.1, 0.05), _s(0.1, 0.1)], 60, 1, "utilisation 8% < 20%"),
        (1, [_s(0.1, 0.0)], 60, 1, "within bounds"),  # at min: stays
        (2, [_s(0.1, 0.05)], 10, 2, "cooling down (10 of 30 s)"),
        (1, [_s(50.0, 1.0)], 10, 1, "cooling down"),
        (2, [_s(4.0, 0.1)], 60, 2, "within bounds"),  # idle but queueing a little: not scaled in
        (0, [], 0, 1, "below min_replicas 1"),
        (5, [], 0, 3, "above max_replicas 3"),
        (2, [], 60, 2, "no measurements yet"),
    ],
)
def test_decide(replicas: int, samples: list[Sample], since: float, wanted: int, why: str) -> None:
    got, reason = decide(POLICY, replicas, samples, since)
    assert got == wanted and reason.startswith(why), (got, reason)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas exceeds max_replicas"),
        ({"max_replicas": 2, "utilisation_up": 0.3, "utilisation_down": 0.5}, "would flap"),
        ({"min_replicas": 1}, "max_replicas"),
    ],
)
def test_invalid_policies_are_refused(policy: dict[str, int], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        normalise_autoscale(policy)


def test_empty_policy_means_off() -> None:
    assert normalise_autoscale({}) == {}
