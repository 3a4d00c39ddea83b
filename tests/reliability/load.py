"""A small, bounded load for the reliability scenarios, and the client's own
count of what it was answered (queries, credit per source, versions), to
compare with the service's aggregates afterwards."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from service.credit import credit, output_sign

from ..service.util import query


@dataclass
class Tally:
    """What the clients saw. ``queries``, ``credit`` and ``hits`` count only
    recorded answers that were not idempotent replays: exactly what the
    aggregates must hold."""

    source_ids: list[str]
    units: int
    rule: str = "proportional"
    requests: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    queries: int = 0
    replays: int = 0
    credit: Counter = field(default_factory=Counter)
    hits: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)  # recorded queries per store version
    version_credit: dict[str, Counter] = field(default_factory=dict)
    answers: list[tuple[int, dict]] = field(default_factory=list)  # (body index, response)
    keyed: dict[str, list] = field(default_factory=dict)  # Idempotency-Key -> its first answer's attributions
    fresh_twins: int = 0  # a key's answer computed again, not replayed (another process during a Redis outage)

    def add(self, r: httpx.Response, body: dict, index: int, keep: bool = False, key: str | None = None) -> None:
        """``key``: the request's Idempotency-Key. A key is credited once
        whatever happens (the ledger's record id comes from it): a second
        answer computed afresh, which a process that never saw the key gives
        while Redis is away (SETTINGS.md, Idempotency-Key), must be the same
        answer and is not counted again."""
        self.requests += 1
        if r.status_code != 200:
            self.failed.append((r.status_code, r.text[:200]))
            return
        out = r.json()
        if keep:
            self.answers.append((index, out))
        if r.headers.get("idempotent-replayed") == "true":
            self.replays += 1
            return
        if key is not None:
            atts = [{k: v for k, v in a.items() if k != "cached"} for a in out["attributions"]]
            if key in self.keyed:
                assert self.keyed[key] == atts, "an idempotent key answered twice differently"
                self.fresh_twins += 1
                return
            self.keyed[key] = atts
        if not out["recorded"]:
            return
        ver = out["store_version"]
        self.queries += len(out["attributions"])
        self.versions[ver] += len(out["attributions"])
        vc = self.version_credit.setdefault(ver, Counter())
        for a in out["attributions"]:
            scores = {s["id"]: s["score"] for s in a["sources"]}
            assert len(scores) == len(self.source_ids), "top_k must cover every source"
            units = credit([scores[s] for s in self.source_ids], self.units, self.rule, output_sign(body["output"]))
            for i, u in units.items():
                self.credit[self.source_ids[i]] += u
                vc[self.source_ids[i]] += u
                self.hits[self.source_ids[i]] += 1


def bodies(train_x, count: int = 40, output: str = "margin") -> list[dict]:
    """``count`` recorded requests of 1-3 queries, covering every source."""
    out, i = [], 0
    for n in range(count):
        size = 1 + n % 3
        out.append({"queries": [query(train_x[(i + j) % len(train_x)]) for j in range(size)], "top_k": 100,
                    "output": output, "record": True})
        i += size
    return out


def text_bodies(count: int = 40, max_words: int = 40) -> list[dict]:
    """``count`` recorded text requests of 1-3 queries (2-``max_words`` words), top_k covering every publisher."""
    rng = np.random.default_rng(0)
    pool = [f"w{i}" for i in range(60)] + [f"s{s}x{i}" for s in range(3) for i in range(15)]
    text = lambda: " ".join(rng.choice(pool, size=int(rng.integers(2, max_words + 1))))  # noqa: E731
    return [{"queries": [{"text": text()} for _ in range(1 + n % 3)], "top_k": 100, "output": "logprob",
             "record": True} for n in range(count)]


async def run_load(base: str, tally: Tally, requests: list[dict], concurrency: int, seconds: float,
                   max_requests: int, events: list[tuple[float, Callable[[], Awaitable[None]]]] = (),
                   idem_every: int = 7, keep: bool = False, after_events_s: float = 0.0,
                   keepalive: bool = True) -> None:
    """``concurrency`` closed-loop clients for ``seconds`` (at most
    ``max_requests`` requests); ``events``: ``(at_seconds, coroutine fn)``
    run meanwhile (stop Redis, swap the store...). Every ``idem_every``-th
    request carries an ``Idempotency-Key`` and is sent twice. ``after_events_s``:
    go on at least this long after the last event has finished (a store swap
    takes as long as it takes on a busy machine; the load must outlast it).
    ``keepalive`` False: a new connection per request (several serving
    processes behind one port then all get requests)."""
    sent = 0
    t0 = time.perf_counter()
    end = [t0 + seconds, not events]  # (the time to stop, the events are done)

    async def client(c: httpx.AsyncClient, k: int):
        nonlocal sent
        while sent < max_requests and (time.perf_counter() < end[0] or not end[1]):
            i = sent
            sent += 1
            body = requests[i % len(requests)]
            headers = {"Idempotency-Key": f"rel-{k}-{i}"} if idem_every and i % idem_every == 0 else None
            for _ in range(2 if headers else 1):
                tally.add(await c.post("/v1/attributions", json=body, headers=headers), body, i % len(requests), keep,
                          headers and headers["Idempotency-Key"])

    async def timeline():
        for at, fn in events:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            await fn()
        end[:] = [max(end[0], time.perf_counter() + after_events_s), True]

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=None if keepalive else 0)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as c:
        await asyncio.gather(timeline(), *(client(c, k) for k in range(concurrency)))


async def after_answers(tally: Tally, n: int, deadline_s: float = 300.0) -> None:
    """Wait until ``tally`` has seen ``n`` more requests answered (a
    ``run_load`` event that happens after so many answers, not after so many
    seconds: the same scenario on a busy machine, only slower)."""
    start, end = tally.requests, time.perf_counter() + deadline_s
    while tally.requests < start + n:
        assert time.perf_counter() < end, f"{tally.requests - start} of {n} requests answered in {deadline_s:g} s"
        await asyncio.sleep(0.01)


def wait_drained(base: str, deadline_s: float = 120.0) -> dict:
    """Wait until Redis is back and the outage journal is replayed."""
    end = time.time() + deadline_s
    while True:
        ready = httpx.get(base + "/readyz", timeout=10).json()
        if (ready["redis"] and not ready["journal_entries"]) or time.time() > end:
            return ready
        time.sleep(0.1)


def aggregates(base: str) -> tuple[int, Counter, Counter]:
    """(recorded queries, credit units by source, credited queries by source)."""
    v = httpx.get(base + "/v1/sources", timeout=10).json()
    return (v["total_queries"], Counter({s["id"]: s["credit_units"] for s in v["sources"] if s["credit_units"]}),
            Counter({s["id"]: s["queries"] for s in v["sources"] if s["queries"]}))


def compare(tally: Tally, base: str) -> dict:
    """Aggregates against the client's own count: lost and double-counted
    queries (and credit units, summed over sources)."""
    total, cred, hits = aggregates(base)
    srcs = set(cred) | set(tally.credit)
    return {"requests": tally.requests, "recorded_queries_client": tally.queries, "recorded_queries_service": total,
            "lost": max(0, tally.queries - total), "double_counted": max(0, total - tally.queries),
            "credit_units_lost": sum(max(0, tally.credit[s] - cred[s]) for s in srcs),
            "credit_units_double": sum(max(0, cred[s] - tally.credit[s]) for s in srcs),
            "hits_mismatch": sum(abs(hits[s] - tally.hits[s]) for s in srcs),
            "failed_requests": len(tally.failed), "idempotent_replays": tally.replays,
            "idempotent_answered_again": tally.fresh_twins}
