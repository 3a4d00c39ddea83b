"""Live per-source figures for ``GET /v1/sources[/{id}]``, poll friendly.

A poll costs one Redis ``GET`` of the aggregate revision counter: the view
is rebuilt only when the revision, the store version or the current time
bucket changed, and the ETag is derived from those (plus the caller's scope),
so an unchanged view answers ``304 Not Modified`` to ``If-None-Match``.
``If-None-Match: *`` matches any current representation: the list always,
one source only when it exists (an unknown id stays 404).
"""

from __future__ import annotations

import hashlib
import time

from .reports import iso
from .runtime import Runtime, Served

MAX_CACHED_VIEWS = 8


def etag_for(rev: int, version: str, bucket: int, scope: str) -> str:
    h = hashlib.sha256(f"{rev}|{version}|{bucket}|{scope}".encode()).hexdigest()[:24]
    return f'W/"{h}"'


def _tags(if_none_match: str | None) -> list[str]:
    return [t.strip() for t in if_none_match.split(",")] if if_none_match else []


def matches(if_none_match: str | None, etag: str, star: bool = True) -> bool:
    """Weak comparison; ``star``: whether ``*`` counts (a representation exists)."""
    tags = _tags(if_none_match)
    return (star and "*" in tags) or etag in tags or etag.removeprefix("W/") in tags


def matches_any(if_none_match: str | None) -> bool:
    """``If-None-Match: *`` (true for any representation that exists)."""
    return "*" in _tags(if_none_match)


async def current(rt: Runtime) -> tuple[int, int]:
    """(revision, current bucket start) — the whole cost of an unchanged poll."""
    now_bucket = int(time.time() // rt.s.bucket_s * rt.s.bucket_s)
    return await rt.ledger.rev(), now_bucket


async def view(rt: Runtime, served: Served, rev: int, now_bucket: int) -> dict:
    """All sources (``served``'s plus any with recorded credit)."""
    version = served.version
    ck = (rev, version, now_bucket)
    if ck in rt.sources_cache:
        return rt.sources_cache[ck]
    s, ledger = rt.s, rt.ledger
    credit, hits, queries = await ledger.totals()
    starts = [now_bucket - s.bucket_s * k for k in range(s.trend_buckets - 1, -1, -1)]
    per_bucket = await ledger.buckets(starts)
    in_store = set(served.att.manifest.source_ids)
    ids = sorted(in_store | set(credit), key=lambda i: (-credit.get(i, 0), i))
    total = sum(credit.values())
    out = {
        "store_version": version, "units_per_query": s.credit_units, "total_queries": queries,
        "bucket_s": s.bucket_s, "trend_start": iso(starts[0]),
        "sources": [{"id": i, "in_store": i in in_store, "credit_units": credit.get(i, 0),
                     "credit": credit.get(i, 0) / s.credit_units, "queries": hits.get(i, 0),
                     "share": credit.get(i, 0) / total if total else 0.0,
                     "trend": [c.get(i, 0) for c, _, _ in per_bucket]} for i in ids],
    }
    if len(rt.sources_cache) >= MAX_CACHED_VIEWS:
        rt.sources_cache.clear()
    rt.sources_cache[ck] = out
    return out
