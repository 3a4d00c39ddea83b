"""``POST /v1/attributions``: validate, idempotency, cache, batch, credit.

Order of work: limits and shapes are checked first (nothing else runs on a
bad request); a retried ``Idempotency-Key`` returns the stored answer; each
query is looked up in the result cache (key: store version, options, the
query's float32 bytes and target); the misses ride one micro-batch; then the
request's credit is recorded once (Redis, or the journal during an outage).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

import numpy as np
import torch

from influence.attributor import Attributor, top_k

from .credit import credit, output_sign
from .errors import invalid, unavailable
from .ledger import OUTAGE, new_record
from .runtime import Runtime
from .schemas import AttributionRequest


def check(att: Attributor, req: AttributionRequest, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Limits, shapes and values -> x ``(B, d)`` float32, y ``(B,)`` (-1 = predicted)."""
    s, d, c = rt.s, att.spec.in_dim, att.spec.n_classes
    if len(req.queries) > s.max_queries:
        raise invalid("queries", f"at most {s.max_queries} queries per request, got {len(req.queries)}")
    if req.top_k > s.max_top_k:
        raise invalid("top_k", f"must be at most {s.max_top_k}")
    if req.granularity != "sources" and att.examples is None:
        raise invalid("granularity", "this store holds no per-example responses")
    for i, q in enumerate(req.queries):
        if len(q.input) != d:
            raise invalid(f"queries[{i}].input", f"expected {d} values, got {len(q.input)}")
        if q.target is not None and not 0 <= q.target < c:
            raise invalid(f"queries[{i}].target", f"must be a class index in [0, {c})")
    with np.errstate(over="ignore"):  # a finite float64 beyond float32's range becomes inf: rejected below
        xn = np.array([q.input for q in req.queries], dtype=np.float32)
    finite = np.isfinite(xn).all(1)
    if not finite.all():
        raise invalid(f"queries[{int(np.argmin(finite))}].input", "values must be finite float32 numbers")
    y = torch.tensor([-1 if q.target is None else q.target for q in req.queries], dtype=torch.long)
    return torch.from_numpy(xn), y


def _cache_key(rt: Runtime, att: Attributor, req: AttributionRequest, x: torch.Tensor, y: int) -> str:
    h = hashlib.sha256(f"{req.output}|{req.granularity}|{req.top_k}|{req.order}|{y}|{rt.s.credit_rule}|"
                       f"{rt.s.credit_units}|".encode())
    h.update(x.numpy().tobytes())
    return rt.ledger.key("cache", att.version, h.hexdigest())


def _answers(att: Attributor, req: AttributionRequest, rt: Runtime, r) -> list[tuple[dict, dict[str, int]]]:
    """Every query of readout ``r`` -> (attribution dict, credit by source id).
    Top-k runs once over the batch's rows, tensors become lists once."""
    man = att.manifest
    probs, preds, tgts = r.probs.tolist(), r.pred.tolist(), r.target.tolist()
    src_rows = r.sources.tolist()
    src_top = ex_top = None
    if req.granularity in ("sources", "both"):
        vals, idx = top_k(r.sources, req.top_k, req.order)
        src_top = zip(vals.tolist(), idx.tolist(), strict=True)
    if req.granularity in ("examples", "both"):
        vals, idx = top_k(r.examples, req.top_k, req.order)
        ex_top = zip(vals.tolist(), idx.tolist(), strict=True)
    sign, ids, ex_src = output_sign(req.output), man.source_ids, man.example_source
    out = []
    for j, (p, pred, tgt) in enumerate(zip(probs, preds, tgts, strict=True)):
        a = {"prediction": {"index": pred, "label": man.classes[pred], "probability": p[pred]},
             "target": {"index": tgt, "label": man.classes[tgt], "probability": p[tgt]},
             "sources": None, "examples": None, "cached": False}
        if src_top is not None:
            vs, ix = next(src_top)
            a["sources"] = [{"id": ids[i], "score": v} for v, i in zip(vs, ix, strict=True)]
        if ex_top is not None:
            vs, ix = next(ex_top)
            a["examples"] = [{"index": i, "source": ids[ex_src[i]], "score": v} for v, i in zip(vs, ix, strict=True)]
        units = credit(src_rows[j], rt.s.credit_units, rt.s.credit_rule, sign)
        out.append((a, {ids[i]: u for i, u in units.items()}))
    return out


async def _cache_get(rt: Runtime, keys: list[str]) -> list[dict | None]:
    if not rt.s.cache_ttl_s or not rt.ledger.healthy:
        return [None] * len(keys)
    try:
        raw = await rt.redis.mget(keys)
    except OUTAGE:
        return [None] * len(keys)
    return [json.loads(v) if v else None for v in raw]


async def _cache_put(rt: Runtime, att: Attributor, items: dict[str, dict]) -> None:
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
    att = rt.att
    if att is None:
        raise unavailable("the store is still loading", rt.s.retry_after_s, "not_ready")
    x, y = check(att, req, rt)
    idem_hash = hashlib.sha256(idem.encode()).hexdigest() if idem else None
    idem_key = rt.ledger.key("idem", principal_id, idem_hash) if idem else None
    if idem_key and (prior := await idempotent_lookup(rt, idem_key, fingerprint)) is not None:
        return prior, True
    if req.record and not rt.ledger.healthy and rt.ledger.journal.entries >= rt.ledger.journal.max_entries:
        raise unavailable("credit cannot be recorded now (Redis unreachable, journal full)", rt.s.retry_after_s)

    caching = bool(rt.s.cache_ttl_s) and rt.ledger.healthy
    keys = [_cache_key(rt, att, req, x[i], int(y[i])) for i in range(len(x))] if caching else [""] * len(x)
    found = await _cache_get(rt, keys) if caching else [None] * len(x)
    miss = [i for i, f in enumerate(found) if f is None]
    for f in found:
        if f is not None:
            f["a"]["cached"] = True
    rt.stats.cache(len(x) - len(miss), len(miss))
    timings = {"queue_ms": 0.0, "readout_ms": 0.0, "batch_queries": 0}
    if miss:
        xs, ys = (x, y) if len(miss) == len(x) else (x[miss], y[miss])
        r = await rt.batcher.submit(att, xs, ys, req.output, req.granularity != "sources")
        fresh = {}
        for i, (a, c) in zip(miss, _answers(att, req, rt, r), strict=True):
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
        where = await rt.ledger.record(new_record(len(x), total, hits, rt.s.bucket_s, rec_id))
        if where == "full":
            raise unavailable("credit cannot be recorded now (Redis unreachable, journal full)", rt.s.retry_after_s)
        recorded = True

    atts = [{**f["a"], "client_id": q.client_id} for f, q in zip(found, req.queries, strict=True)]
    body = {"request_id": uuid.uuid4().hex, "store_version": att.version, "output": req.output,
            "granularity": req.granularity, "attributions": atts, "recorded": recorded,
            "timings": {**timings, "total_ms": (time.perf_counter() - t0) * 1000}}
    if idem_key:
        body = await _idempotent_store(rt, idem_key, fingerprint, body)
    return body, False
