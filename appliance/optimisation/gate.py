"""The accuracy gate: is a candidate close enough to its parent to be offered?

The gate is relative: each gated value of the candidate must be at least the parent's
value less `max_relative_drop` of it, both measured by `metrics.measure` (or, for a
generative model, `textgen.measure`) on the same validation set. Relative rather than
absolute, so that one setting means the same for a classifier at 0.80 accuracy and one
at 0.99. Perplexity is the one value where lower is better: there the candidate may be
at most `max_relative_drop` of the parent's value above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.optimisation.validation_data import METRICS

# The values each metric is judged on. mean_cosine is reported but not gated: a few badly
# broken rows can hide in a good mean, and min_cosine is there to catch exactly those.
GATED: dict[str, tuple[str, ...]] = {
    "top1_accuracy": ("top1_accuracy",),
    "embedding_agreement": ("min_cosine", "retrieval_top1_agreement"),
    "exact_match": ("exact_match",),
    "perplexity": ("perplexity",),
}
assert set(GATED) == set(METRICS)
# Gated values where a smaller number is the better model.
LOWER_IS_BETTER = frozenset({"perplexity"})


@dataclass(frozen=True)
class Check:
    """One gated value: what the candidate measured against what it needed."""

    name: str
    measured: float
    baseline: float
    threshold: float
    passed: bool
    higher_is_better: bool = True

    def relation(self) -> str:
        """How the measured value failed its threshold, in a word: '<' or '>'."""
        return "<" if self.higher_is_better else ">"


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one candidate, with every check for the report."""

    passed: bool
    checks: tuple[Check, ...]
    max_relative_drop: float = 0.01

    def reason(self) -> str:
        """One line per failing check; empty when the candidate passed."""
        return "\n".join(
            f"{c.name} {c.measured:.3f} {c.relation()} {c.threshold:.3f} "
            f"{'required' if c.higher_is_better else 'allowed'} "
            f"(parent {c.baseline:.3f}, max relative {'drop' if c.higher_is_better else 'rise'} "
            f"{self.max_relative_drop:.1%})"
            for c in self.checks
            if not c.passed
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for the optimisation job's report."""
        return {
            "passed": self.passed,
            "max_relative_drop": self.max_relative_drop,
            "checks": [
                {"name": c.name, "measured": c.measured, "baseline": c.baseline, "threshold": c.threshold,
                 "passed": c.passed, "higher_is_better": c.higher_is_better}
                for c in self.checks
            ],
        }  # fmt: skip


def verdict(
    metric: str, candidate: dict[str, float], parent: dict[str, float], max_relative_drop: float = 0.01
) -> Verdict:
    """Judges `candidate` against `parent` (both from `metrics.measure` for `metric`).

    threshold = parent - |parent| x max_relative_drop, which is parent x (1 - drop) for the
    values gated here (all in [0, 1] in practice; the absolute value keeps a negative
    min_cosine from getting a threshold above the parent itself). A check passes when
    measured >= threshold; for perplexity (LOWER_IS_BETTER) the threshold is
    parent + |parent| x max_relative_drop and it passes when measured <= threshold.
    Compared exactly, with no epsilon: the values are fractions of
    rows or cosines computed the same way for parent and candidate, so a candidate that
    reproduces its parent reproduces its numbers, and an epsilon would only widen the drop
    the operator allowed. NaN never passes.
    """
    if metric not in GATED:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(GATED)}")
    if not 0 <= max_relative_drop < 1:
        raise ValueError(f"max_relative_drop must be in [0, 1), got {max_relative_drop}")
    checks = []
    for name in GATED[metric]:
        for side, values in (("candidate", candidate), ("parent", parent)):
            if name not in values:
                raise ValueError(f"the {side}'s values lack {name!r}, which {metric} gates on")
        baseline, measured = float(parent[name]), float(candidate[name])
        if name in LOWER_IS_BETTER:
            threshold = baseline + abs(baseline) * max_relative_drop
            checks.append(Check(name, measured, baseline, threshold, passed=measured <= threshold,
                                higher_is_better=False))  # fmt: skip
        else:
            threshold = baseline - abs(baseline) * max_relative_drop
            checks.append(Check(name, measured, baseline, threshold, passed=measured >= threshold))
    return Verdict(all(c.passed for c in checks), tuple(checks), max_relative_drop)
