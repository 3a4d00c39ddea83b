"""Store hot swap during recorded load: zero failed requests; every answer
comes whole from one of the two versions (its scores are exactly that
version's: the new one's responses are twice the old ones); and the
aggregates equal the sum over versions of what each version answered. On a
vector store and on a text store (``target``)."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from ..service.util import publish_scaled, serve
from .load import Tally, compare, run_load


def _scores(out: dict) -> list[list[tuple[str, float]]]:
    return [sorted((s["id"], s["score"]) for s in a["sources"]) for a in out["attributions"]]


def test_hot_swap_under_recorded_load(target, figures):
    s = target.settings(cache_ttl_s=60, max_wait_ms=2)
    reqs = target.bodies(30)
    swapped = {}

    with serve(s) as base:
        st = httpx.get(base + "/v1/store").json()
        old = st["version"]
        ref = [httpx.post(base + "/v1/attributions", json={**b, "record": False}).json() for b in reqs]

        async def swap():
            swapped["new"] = await asyncio.to_thread(publish_scaled, target.root)
            async with httpx.AsyncClient(base_url=base, timeout=60) as c:
                swapped["reload"] = (await c.post("/v1/admin/reload")).json()

        tally = Tally(st["source_ids"], s.credit_units, s.credit_rule)
        asyncio.run(run_load(base, tally, reqs, concurrency=6, seconds=3.0, max_requests=3000,
                             events=[(1.2, swap)], keep=True, after_events_s=1.0))
        result = compare(tally, base)

    new = swapped["new"]
    assert swapped["reload"]["changed"] and swapped["reload"]["store_version"] == new
    assert tally.failed == []
    seen = Counter(out["store_version"] for _, out in tally.answers)
    assert set(seen) == {old, new}, seen
    mixed = 0
    for i, out in tally.answers:
        factor = 1.0 if out["store_version"] == old else 2.0  # powers of two scale float32 exactly
        expect = [[(k, factor * v) for k, v in row] for row in _scores(ref[i])]
        mixed += _scores(out) != expect
    assert mixed == 0
    # aggregates per version add up: the sum over both versions of what the clients were served
    assert sum(tally.versions.values()) == tally.queries
    total_credit = sum((tally.version_credit[v] for v in tally.version_credit), Counter())
    assert total_credit == tally.credit
    assert result["lost"] == result["double_counted"] == 0, result
    assert result["credit_units_lost"] == result["credit_units_double"] == result["hits_mismatch"] == 0, result
    figures.append({"scenario": f"store hot swap under load ({target.kind} store)", "store_kind": target.kind,
                    **result, "answers_per_version": dict(seen),
                    "recorded_queries_per_version": dict(tally.versions), "answers_not_matching_their_version": mixed,
                    "concurrency": 6})
