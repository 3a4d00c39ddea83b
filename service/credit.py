"""Exact integer apportionment: the credit rule and report payouts.

Both use the largest-remainder method on exact rationals (a float score is
converted with ``Fraction``, which is exact), so the parts always add up to
the whole, and the same inputs always give the same parts.

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
from fractions import Fraction


def largest_remainder(weights: Sequence[int | Fraction], total: int) -> list[int]:
    """Split the integer ``total`` over non-negative ``weights`` in
    proportion; parts are integers summing exactly to ``total`` (all zero
    when every weight is zero). Leftover units go to the largest fractional
    remainders; ties go to the lower index."""
    wsum = sum(weights, Fraction(0))
    if wsum <= 0 or total == 0:
        return [0] * len(weights)
    quotas = [Fraction(w) * total / wsum for w in weights]
    parts = [q.numerator // q.denominator for q in quotas]
    left = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - parts[i]), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


def credit(scores: Sequence[float], units: int, rule: str = "proportional", sign: int = 1) -> dict[int, int]:
    """``{source index: units}`` for one query; only sources given credit."""
    oriented = [sign * float(s) for s in scores]
    if rule == "top":
        best = max(range(len(oriented)), key=lambda i: (oriented[i], -i), default=None)
        return {best: units} if best is not None and oriented[best] > 0 else {}
    if rule != "proportional":
        raise ValueError(f"unknown credit rule {rule!r}")
    pos = [(i, Fraction(s)) for i, s in enumerate(oriented) if s > 0]
    parts = largest_remainder([w for _, w in pos], units)
    return {i: p for (i, _), p in zip(pos, parts, strict=True) if p}


def output_sign(kind: str) -> int:
    """+1 when a higher output means a better answer (margin, logprob)."""
    return -1 if kind == "loss" else 1
