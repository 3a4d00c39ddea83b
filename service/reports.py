"""Compensation report: a money pool split over publishers by credit.

For a UTC period ``[start, end)`` (both on bucket boundaries) the credit
units of each source are summed over the period's buckets; the pool, in
minor units of its currency (cents; 0 decimals for JPY, 3 for KWD, ...), is
split in proportion by the largest-remainder method, so the payouts add up
to the pool exactly (to nothing when no credit was recorded in the period).
Shares are decimal strings with 9 places; amounts are decimal strings.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from .credit import largest_remainder
from .errors import invalid

_EXPONENT = {c: 0 for c in ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND",
                            "VUV", "XAF", "XOF", "XPF")}
_EXPONENT.update({c: 3 for c in ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")})
CSV_COLUMNS = ["period_start", "period_end", "source_id", "credit_units", "queries", "share", "payout_minor",
               "payout", "currency"]


def parse_time(text: str, field: str, bucket_s: int) -> int:
    """ISO-8601 date or date-time (naive = UTC) -> epoch seconds, on a bucket boundary."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise invalid(field, "not an ISO-8601 date or date-time (e.g. 2025-01-31T00:00:00Z)", "query") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    ts = t.timestamp()
    if ts % bucket_s:
        raise invalid(field, f"must lie on a {bucket_s} s bucket boundary (UTC)", "query")
    return int(ts)


def parse_period(start: str, end: str, bucket_s: int) -> tuple[int, int]:
    s, e = parse_time(start, "start", bucket_s), parse_time(end, "end", bucket_s)
    if e <= s:
        raise invalid("end", "must be after start", "query")
    return s, e


def parse_pool(amount: str, currency: str) -> tuple[int, int, str]:
    """-> (pool in minor units, decimal exponent, currency code)."""
    cur = currency.strip().upper()
    if len(cur) != 3 or not cur.isalpha():
        raise invalid("currency", "expected a 3-letter ISO-4217 code", "query")
    exp = _EXPONENT.get(cur, 2)
    try:
        dec = Decimal(amount.strip())
    except InvalidOperation:
        raise invalid("amount", "not a decimal number", "query") from None
    if not dec.is_finite() or dec < 0:
        raise invalid("amount", "must be a finite number >= 0", "query")
    minor = dec.scaleb(exp)
    if minor != minor.to_integral_value():
        raise invalid("amount", f"{cur} has {exp} decimal places", "query")
    if minor > 10**18:
        raise invalid("amount", "too large", "query")
    return int(minor), exp, cur


def _money(minor: int, exp: int) -> str:
    return str(Decimal(minor).scaleb(-exp).quantize(Decimal(1).scaleb(-exp)))


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def compensation(start: int, end: int, pool_minor: int, exp: int, currency: str,
                 per_bucket: list[tuple[dict[str, int], dict[str, int], int]], store_version: str,
                 only: str | None = None) -> dict:
    """The report as a dict (``schemas.CompensationReport``); ``only``
    restricts the lines to one source (a publisher's view) after the split."""
    credit: dict[str, int] = {}
    hits: dict[str, int] = {}
    queries = 0
    for c, h, q in per_bucket:
        queries += q
        for s, u in c.items():
            credit[s] = credit.get(s, 0) + u
        for s, n in h.items():
            hits[s] = hits.get(s, 0) + n
    ids = sorted(credit, key=lambda s: (-credit[s], s))
    total = sum(credit.values())
    payouts = largest_remainder([credit[s] for s in ids], pool_minor)
    lines = []
    for s, pay in zip(ids, payouts, strict=True):
        share = Decimal(credit[s]) / Decimal(total) if total else Decimal(0)
        lines.append({"source_id": s, "credit_units": credit[s], "queries": hits.get(s, 0),
                      "share": str(share.quantize(Decimal("1e-9"))), "payout_minor": pay,
                      "payout": _money(pay, exp)})
    allocated = sum(payouts)
    if only is not None:
        lines = [ln for ln in lines if ln["source_id"] == only] or [
            {"source_id": only, "credit_units": 0, "queries": 0, "share": "0.000000000", "payout_minor": 0,
             "payout": _money(0, exp)}]
    return {"start": iso(start), "end": iso(end), "currency": currency, "pool": _money(pool_minor, exp),
            "pool_minor": pool_minor, "total_credit_units": total, "total_queries": queries,
            "allocated_minor": allocated, "lines": lines, "store_version": store_version}


def to_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for ln in report["lines"]:
        w.writerow([report["start"], report["end"], ln["source_id"], ln["credit_units"], ln["queries"],
                    ln["share"], ln["payout_minor"], ln["payout"], report["currency"]])
    return buf.getvalue()
