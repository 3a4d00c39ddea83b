"""``POST /v1/attributions``: validate, idempotency, cache, batch, credit.

Order of work: limits and shapes are checked first (nothing else runs on a
bad request); an ``Idempotency-Key`` is claimed with the body's fingerprint
before any work, and a retry or a concurrent twin gets the stored answer
(``service.answers``); each
query is looked up in the result cache (key: store version, options, the
query's float32 bytes and target, or its token ids); the misses ride one
micro-batch; then the request's credit is recorded once (Redis, or the
journal during an outage). What depends on the store's query form (vector or
text) is the served version's ``form`` (``service.forms``); the cache and
the stored idempotent answers are ``service.answers``.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from .errors import invalid, unavailable
from .forms import NOT_FINITE, Form, NotFinite, query_field
from .ledger import new_record
from .runtime import Runtime, Served
from .schemas import AttributionRequest

# ``Ledger.record`` outcomes that left the credit unrecorded -> why, for the 503's message
NOT_RECORDED = {"full": "journal full", "unwritable": "journal not writable (disk full?)"}


def check(rt: Runtime, att, form: Form, req: AttributionRequest):
    """Limits of every kind, then the kind's forms, shapes and limits
    (``Form.prepare``), then the readout's cost (``Form.within_budget``) ->
    (rows, cache tags)."""
    s = rt.s
    if len(req.queries) > s.max_queries:
        raise invalid("queries", f"at most {s.max_queries} queries per request, got {len(req.queries)}")
    if req.top_k > s.max_top_k:
        raise invalid("top_k", f"must be at most {s.max_top_k}")
    if "token_top_k" in req.model_fields_set and not req.per_token:
        raise invalid("token_top_k", "only with per_token: true (sources per token of a per-token answer)")
    if req.token_top_k > s.max_token_top_k:
        raise invalid("token_top_k", f"must be at most {s.max_token_top_k}")
    rows, tags = form.prepare(att, req, s)
    form.within_budget(att, [rows], req.granularity != "sources", s)
    return rows, tags


async def attribute(rt: Runtime, served: Served, req: AttributionRequest, principal_id: str, idem: str | None,
                    fingerprint: str, off_loop: bool = False) -> tuple[dict, bool]:
    """-> (response body, replayed from an earlier identical request);
    ``served``: the version that answers it, whole; ``off_loop``: check and
    encode the queries in a worker thread (a large body: tokenizing up to
    ``max_queries`` texts would hold the event loop)."""
    t0 = time.perf_counter()
    att, form, answers = served.att, served.form, rt.answers
    if off_loop:
        rows, tags = await asyncio.to_thread(check, rt, att, form, req)
    else:
        rows, tags = check(rt, att, form, req)
    if not idem:
        return await _answer(rt, att, form, req, rows, tags, None, t0), False
    idem_hash = answers.idem_hash(idem)
    claim = await answers.claim(answers.idem_key(principal_id, idem_hash), fingerprint)
    if claim.replay is not None:
        return claim.replay, True
    try:
        body = await _answer(rt, att, form, req, rows, tags, f"idem-{principal_id}-{idem_hash}", t0)
    except BaseException:
        await answers.release(claim)
        raise
    return await answers.finish(claim, body), False


async def _answer(rt: Runtime, att, form: Form, req: AttributionRequest, rows, tags, record_id: str | None,
                  t0: float) -> dict:
    """Cache, readout, credit -> the response body (computed now)."""
    answers, n, output = rt.answers, len(tags), form.output(req)
    if req.record and not rt.ledger.healthy and rt.ledger.journal.entries >= rt.ledger.journal.max_entries:
        raise unavailable(f"credit cannot be recorded now (Redis unreachable, {NOT_RECORDED['full']})",
                          rt.s.retry_after_s)

    caching = answers.caching
    keys = [answers.cache_key(att.version, req, output, t) for t in tags] if caching else [""] * n
    found = await answers.get_many(keys) if caching else [None] * n
    miss = [i for i, f in enumerate(found) if f is None]
    for f in found:
        if f is not None:
            f["a"]["cached"] = True
    rt.stats.cache(n - len(miss), len(miss))
    timings = {"queue_ms": 0.0, "readout_ms": 0.0, "batch_queries": 0}
    if miss:
        todo = rows if len(miss) == n else form.take(rows, miss)
        r = await form.submit(rt.batcher, att, todo, len(miss), output, req.granularity != "sources",
                              form.block(rt.s), req.per_token)
        try:
            built = form.answers(att, req, output, rt.s, r, todo)
        except NotFinite as e:
            raise invalid(query_field(miss[e.row], req.queries[miss[e.row]]), NOT_FINITE) from None
        fresh = {}
        for i, (a, c) in zip(miss, built, strict=True):
            found[i] = {"a": a, "c": c}
            if caching:
                fresh[keys[i]] = found[i]
        await answers.put_many(att.version, fresh)
        timings = {"queue_ms": r.queue_s * 1000, "readout_ms": r.readout_s * 1000, "batch_queries": r.batch_queries}

    recorded = False
    if req.record:
        await _record(rt, found, record_id)
        recorded = True

    atts = [{**f["a"], "client_id": q.client_id} for f, q in zip(found, req.queries, strict=True)]
    return {"request_id": uuid.uuid4().hex, "store_version": att.version, "output": output,
            "granularity": req.granularity, "attributions": atts, "recorded": recorded,
            "timings": {**timings, "total_ms": (time.perf_counter() - t0) * 1000}}


async def _record(rt: Runtime, found: list[dict], record_id: str | None) -> None:
    """The request's credit, once (a retried Idempotency-Key has the same id)."""
    total: dict[str, int] = {}
    hits: dict[str, int] = {}
    for f in found:
        for src, u in f["c"].items():
            total[src] = total.get(src, 0) + u
            hits[src] = hits.get(src, 0) + 1
    where = await rt.ledger.record(new_record(len(found), total, hits, rt.s.bucket_s, record_id))
    if where in NOT_RECORDED:
        raise unavailable(f"credit cannot be recorded now (Redis unreachable, {NOT_RECORDED[where]})",
                          rt.s.retry_after_s)
