"""Compensation report: a money pool split over publishers by credit.

For a UTC period ``[start, end)`` (both on bucket boundaries) the credit
units of each source are summed over the period's buckets; the pool, in
minor units of its currency (cents; 0 decimals for JPY, 3 for KWD, ...), is
split in proportion by the largest-remainder method, so the payouts add up
to the pool exactly (to nothing when no credit was recorded in the period).
Shares are decimal strings with 9 places; amounts are decimal strings.

Accepted input (else a 422 naming the parameter): periods within
1970-01-01T00:00:00Z .. 9999-01-01T00:00:00Z, a pool of at most 18 digits of
minor units, a currency from ``CURRENCIES``.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from .credit import largest_remainder
from .errors import invalid

# ISO 4217 "list one": the active currency codes that have a minor unit (fund codes
# such as CHE or CLF included; the codes without one - XAU, XAG, XPD, XPT, XDR,
# XBA..XBD, XSU, XUA, XTS, XXX - and long withdrawn ones such as HRK or ZWL are not;
# codes being phased out, ANG, BGN, CUC, SLL, are still accepted next to their
# successors). Shipped here: nothing is fetched at run time. SETTINGS.md lists them.
CURRENCIES = frozenset("""
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP BYN BZD
CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL
GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD
KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO
NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD
SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV
WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
""".split())
# Decimal places of the minor unit; every other code has 2.
_EXPONENT = {c: 0 for c in ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
                            "VND", "VUV", "XAF", "XOF", "XPF")}
_EXPONENT.update({c: 3 for c in ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")})
_EXPONENT.update({c: 4 for c in ("CLF", "UYW")})
CSV_COLUMNS = ["period_start", "period_end", "source_id", "credit_units", "queries", "share", "payout_minor",
               "payout", "currency"]

# Report periods lie in [1970-01-01T00:00:00Z, 9999-01-01T00:00:00Z]: credit is only ever
# recorded at the time a request is served, epoch seconds stay non-negative (the bucket
# keys and their sorted-set scores), and every instant, printed back in UTC, is a valid
# ISO-8601 date-time (year <= 9999).
MIN_TIME = 0
MAX_TIME = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp())
# The pool: at most 18 digits of minor units (below 10^18: fits a signed 64-bit integer).
MAX_POOL_MINOR = 10**18 - 1
_AMOUNT_CHARS = 64
_ISO_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,9})?)?)?"
                       r"(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CODE = re.compile(r"[A-Za-z]{3}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_time(text: str, field: str, bucket_s: int) -> int:
    """ISO-8601 date or date-time (naive = UTC) -> epoch seconds, on a bucket
    boundary, in ``[MIN_TIME, MAX_TIME]``. Only the ASCII forms of
    ``_ISO_TIME`` (no NUL or other trailing bytes); the instant is computed in
    exact integer microseconds, so a microsecond off a boundary is refused
    at any year (a float timestamp loses it past 2^53 us)."""
    out_of_range = invalid(field, "outside the accepted range 1970-01-01T00:00:00Z .. 9999-01-01T00:00:00Z", "query")
    not_iso = invalid(field, "not an ISO-8601 date or date-time (e.g. 2025-01-31T00:00:00Z)", "query")
    text = text.strip(" ")
    if len(text) > 40 or not _ISO_TIME.fullmatch(text):
        raise not_iso
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise not_iso from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    try:
        us = (t - _EPOCH) // timedelta(microseconds=1)
    except OverflowError:  # year 1 minus an offset, year 9999 plus one
        raise out_of_range from None
    if not MIN_TIME * 10**6 <= us <= MAX_TIME * 10**6:
        raise out_of_range
    if us % (bucket_s * 10**6):
        raise invalid(field, f"must lie on a {bucket_s} s bucket boundary (UTC): reports cover whole buckets",
                      "query")
    return us // 10**6


def parse_period(start: str, end: str, bucket_s: int) -> tuple[int, int]:
    s, e = parse_time(start, "start", bucket_s), parse_time(end, "end", bucket_s)
    if e <= s:
        raise invalid("end", "must be after start", "query")
    return s, e


def parse_currency(currency: str) -> tuple[str, int]:
    """-> (ISO-4217 code, decimal places of its minor unit)."""
    cur = currency.strip(" ")
    if not _CODE.fullmatch(cur) or (cur := cur.upper()) not in CURRENCIES:  # ASCII first: "ı".upper() is "I"
        raise invalid("currency", "not an active ISO-4217 currency code: three ASCII letters such as EUR, USD, JPY",
                      "query")
    return cur, _EXPONENT.get(cur, 2)


def parse_pool(amount: str, currency: str) -> tuple[int, int, str]:
    """-> (pool in minor units, decimal exponent, currency code).

    Exact integer arithmetic on the decimal's digits (no context, so no
    rounding, overflow or underflow): ``1e999999`` is too large, ``1e-999999``
    has too many decimal places, and neither costs more than its text."""
    cur, exp = parse_currency(currency)
    text = amount.strip()
    if len(text) > _AMOUNT_CHARS:
        raise invalid("amount", f"at most {_AMOUNT_CHARS} characters", "query")
    try:
        dec = Decimal(text)
    except InvalidOperation:
        raise invalid("amount", "not a decimal number", "query") from None
    if not dec.is_finite() or (dec.is_signed() and not dec.is_zero()):
        raise invalid("amount", "must be a finite number >= 0", "query")
    if not _DECIMAL.fullmatch(text):  # Decimal also takes "1_000" and non-ASCII digits
        raise invalid("amount", "not a decimal number (ASCII digits, e.g. 1250.00)", "query")
    if dec.is_zero():
        return 0, exp, cur
    too_large = invalid("amount", f"at most {_money(MAX_POOL_MINOR, exp)} {cur} "
                        f"({len(str(MAX_POOL_MINOR))} digits of minor units)", "query")
    places = invalid("amount", f"{cur} has {exp} decimal places", "query")
    if dec.adjusted() + exp >= len(str(MAX_POOL_MINOR)):
        raise too_large
    if dec.adjusted() + exp < 0:  # less than one minor unit
        raise places
    _, digits, e = dec.as_tuple()
    coeff, shift = int("".join(map(str, digits))), e + exp  # digits: at most _AMOUNT_CHARS
    if shift >= 0:
        minor = coeff * 10**shift
    else:
        minor, rest = divmod(coeff, 10**-shift)
        if rest:
            raise places
    if minor > MAX_POOL_MINOR:
        raise too_large
    return minor, exp, cur


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
