"""Exact integer apportionment: the credit rule and report payouts.

Both use the largest-remainder method in exact integer arithmetic (a float
score is ``m / 2^k`` exactly, so scores are scaled to one common power of
two without rounding), so the parts always add up to the whole, and the same
inputs always give the same parts. ``Fraction`` would give the same parts
(checked by the tests against a ``Fraction`` reference) at ~8x the cost,
which was 11% of the service's CPU per query (BENCHMARKS.md).

Credit rule (``credit_rule`` setting), per recorded query, on the source
scores ``τ(q, s)`` of the served output, oriented so that positive means the
source helped (``−τ`` for ``output="loss"``):

* ``proportional`` (default): ``credit_units`` are split over the sources
  with positive score in proportion to the score;
* ``top``: all ``credit_units`` go to the source with the largest positive
  score (ties: the first in store order).

A query where no source has a positive score distributes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence


def largest_remainder(weights: Sequence[int], total: int) -> list[int]:
    """Split the integer ``total`` over non-negative ``weights`` in
    proportion; parts are integers summing exactly to ``total`` (all zero
    when every weight is zero). Leftover units go to the largest fractional
    remainders; ties go to the lower index."""
    wsum = sum(weights)
    if wsum <= 0 or total == 0:
        return [0] * len(weights)
    # quota_i = w_i * total / wsum: all share the denominator wsum, so the
    # integer remainders order the fractional parts exactly
    q = [divmod(w * total, wsum) for w in weights]
    parts = [a for a, _ in q]
    order = sorted(range(len(weights)), key=lambda i: (-q[i][1], i))
    for i in order[:total - sum(parts)]:
        parts[i] += 1
    return parts


def exact_integers(values: Sequence[float]) -> list[int]:
    """Finite non-negative floats -> integers in exactly the same proportions
    (each float is ``n / d`` with ``d`` a power of two: scale all to the
    largest ``d``)."""
    ratios = [v.as_integer_ratio() for v in values]
    den = max((d for _, d in ratios), default=1)
    return [n * (den // d) for n, d in ratios]


def credit(scores: Sequence[float], units: int, rule: str = "proportional", sign: int = 1) -> dict[int, int]:
    """``{source index: units}`` for one query; only sources given credit."""
    oriented = [sign * float(s) for s in scores]
    if rule == "top":
        best = max(range(len(oriented)), key=lambda i: (oriented[i], -i), default=None)
        return {best: units} if best is not None and oriented[best] > 0 else {}
    if rule != "proportional":
        raise ValueError(f"unknown credit rule {rule!r}")
    pos = [(i, s) for i, s in enumerate(oriented) if s > 0]
    parts = largest_remainder(exact_integers([w for _, w in pos]), units)
    return {i: p for (i, _), p in zip(pos, parts, strict=True) if p}


def output_sign(kind: str) -> int:
    """+1 when a higher output means a better answer (margin, logprob)."""
    return -1 if kind == "loss" else 1
