"""``POST /v1/attributions``: validate, idempotency, cache, batch, credit.

Order of work: limits and shapes are checked first (nothing else runs on a
bad request); a retried ``Idempotency-Key`` returns the stored answer; each
query is looked up in the result cache (key: store version, options, the
query's float32 bytes and target, or its token ids); the misses ride one
micro-batch; then the request's credit is recorded once (Redis, or the
journal during an outage). What depends on the store's kind (vector or
text) is the runtime's ``kind`` (``service.kinds``).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from .errors import invalid, unavailable
from .kinds import Kind
from .ledger import OUTAGE, new_record
from .runtime import Runtime
from .schemas import AttributionRequest


def check(rt: Runtime, att, kind: Kind, req: AttributionRequest):
    """Limits of every kind, then the kind's forms, shapes and limits
    (``Kind.prepare``) -> (rows, cache tags)."""
    s = rt.s
    if len(req.queries) > s.max_queries:
        raise invalid("queries", f"at most {s.max_queries} queries per request, got {len(req.queries)}")
    if req.top_k > s.max_top_k:
        raise invalid("top_k", f"must be at most {s.max_top_k}")
    return kind.prepare(att, req, s)


def _cache_key(rt: Runtime, att, req: AttributionRequest, output: str, tag: tuple[str, bytes]) -> str:
    h = hashlib.sha256(f"{output}|{req.granularity}|{req.top_k}|{req.order}|{tag[0]}|{rt.s.credit_rule}|"
                       f"{rt.s.credit_units}|".encode())
    h.update(tag[1])
    return rt.ledger.key("cache", att.version, h.hexdigest())


async def _cache_get(rt: Runtime, keys: list[str]) -> list[dict | None]:
    if not rt.s.cache_ttl_s or not rt.ledger.healthy:
        return [None] * len(keys)
    try:
        raw = await rt.redis.mget(keys)
    except OUTAGE:
        return [None] * len(keys)
    return [json.loads(v) if v else None for v in raw]


async def _cache_put(rt: Runtime, att, items: dict[str, dict]) -> None:
    if not rt.s.cache_ttl_s or not items or not rt.ledger.healthy or att is not rt.att:
        return  # (a version swapped out meanwhile: its cache is being dropped)
    try:
        async with rt.redis.pipeline(transaction=False) as pipe:
            for k, v in items.items():
                pipe.set(k, json.dumps(v, separators=(",", ":")), ex=rt.s.cache_ttl_s)
            await pipe.execute()
    except OUTAGE:
        pass


async def idempotent_lookup(rt: Runtime, key: str, fingerprint: str) -> dict | None:
    """The stored answer for a retried key (422 if its body differs)."""
    found = rt.idem_local.get(key)
    if found is None and rt.ledger.healthy:
        try:
            raw = await rt.redis.get(key)
            found = json.loads(raw) if raw else None
        except OUTAGE:
            found = None
    if found is not None and found["fp"] != fingerprint:
        raise invalid("Idempotency-Key", "was used before with a different request body", "header")
    return found["body"] if found else None


async def _idempotent_store(rt: Runtime, key: str, fingerprint: str, body: dict) -> dict:
    """Keep the answer; if a concurrent twin stored one first, return that."""
    value = {"fp": fingerprint, "body": body}
    if rt.ledger.healthy:
        try:
            if not await rt.redis.set(key, json.dumps(value), nx=True, ex=rt.s.idempotency_ttl_s):
                raw = await rt.redis.get(key)
                if raw:
                    value = json.loads(raw)
        except OUTAGE:
            pass
    rt.remember_local(key, value)
    return value["body"]


async def attribute(rt: Runtime, req: AttributionRequest, principal_id: str, idem: str | None,
                    fingerprint: str) -> tuple[dict, bool]:
    """-> (response body, replayed from an earlier identical request)."""
    t0 = time.perf_counter()
    att, kind = rt.att, rt.kind  # (set together: one version's pair)
    if att is None:
        raise unavailable("the store is still loading", rt.s.retry_after_s, "not_ready")
    rows, tags = check(rt, att, kind, req)
    n, output = len(tags), kind.output(req)
    idem_hash = hashlib.sha256(idem.encode()).hexdigest() if idem else None
    idem_key = rt.ledger.key("idem", principal_id, idem_hash) if idem else None
    if idem_key and (prior := await idempotent_lookup(rt, idem_key, fingerprint)) is not None:
        return prior, True
    if req.record and not rt.ledger.healthy and rt.ledger.journal.entries >= rt.ledger.journal.max_entries:
        raise unavailable("credit cannot be recorded now (Redis unreachable, journal full)", rt.s.retry_after_s)

    caching = bool(rt.s.cache_ttl_s) and rt.ledger.healthy
    keys = [_cache_key(rt, att, req, output, t) for t in tags] if caching else [""] * n
    found = await _cache_get(rt, keys) if caching else [None] * n
    miss = [i for i, f in enumerate(found) if f is None]
    for f in found:
        if f is not None:
            f["a"]["cached"] = True
    rt.stats.cache(n - len(miss), len(miss))
    timings = {"queue_ms": 0.0, "readout_ms": 0.0, "batch_queries": 0}
    if miss:
        todo = rows if len(miss) == n else kind.take(rows, miss)
        r = await kind.submit(rt.batcher, att, todo, len(miss), output, req.granularity != "sources",
                              kind.block(rt.s))
        fresh = {}
        for i, (a, c) in zip(miss, kind.answers(att, req, output, rt.s, r, todo), strict=True):
            found[i] = {"a": a, "c": c}
            if caching:
                fresh[keys[i]] = found[i]
        await _cache_put(rt, att, fresh)
        timings = {"queue_ms": r.queue_s * 1000, "readout_ms": r.readout_s * 1000, "batch_queries": r.batch_queries}

    recorded = False
    if req.record:
        total: dict[str, int] = {}
        hits: dict[str, int] = {}
        for f in found:
            for src, u in f["c"].items():
                total[src] = total.get(src, 0) + u
                hits[src] = hits.get(src, 0) + 1
        rec_id = f"idem-{principal_id}-{idem_hash}" if idem else None
        where = await rt.ledger.record(new_record(n, total, hits, rt.s.bucket_s, rec_id))
        if where == "full":
            raise unavailable("credit cannot be recorded now (Redis unreachable, journal full)", rt.s.retry_after_s)
        recorded = True

    atts = [{**f["a"], "client_id": q.client_id} for f, q in zip(found, req.queries, strict=True)]
    body = {"request_id": uuid.uuid4().hex, "store_version": att.version, "output": output,
            "granularity": req.granularity, "attributions": atts, "recorded": recorded,
            "timings": {**timings, "total_ms": (time.perf_counter() - t0) * 1000}}
    if idem_key:
        body = await _idempotent_store(rt, idem_key, fingerprint, body)
    return body, False
