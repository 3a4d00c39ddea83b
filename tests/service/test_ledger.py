"""Aggregates are money: exact integer credit, idempotency, and a journal
replayed exactly once after a Redis outage (a real redis-server that the
test kills and restarts)."""

from __future__ import annotations

import asyncio
import random
import time
from fractions import Fraction

import httpx
import redis
import redis.asyncio as aioredis

from service.credit import credit, largest_remainder
from service.ledger import Journal, Ledger, new_record

from .util import REDIS_URL, free_port, query, serve, start_redis


def test_largest_remainder_is_exact_and_proportional():
    rng = random.Random(0)
    for _ in range(300):
        w = [rng.choice([0, rng.randint(1, 10**9)]) for _ in range(rng.randint(1, 30))]
        total = rng.randint(0, 10**7)
        parts = largest_remainder(w, total)
        if sum(w) == 0:
            assert parts == [0] * len(w)
            continue
        assert sum(parts) == total and all(p >= 0 for p in parts)
        for p, wi in zip(parts, w, strict=True):  # each part within one unit of its exact quota
            assert abs(Fraction(wi * total, sum(w)) - p) < 1
    assert largest_remainder([1, 1, 1], 100) == [34, 33, 33]  # ties: lower index first


def _reference_credit(scores: list[float], units: int) -> dict[int, int]:
    """The proportional rule on exact rationals, the obvious way."""
    pos = [(i, Fraction(s)) for i, s in enumerate(scores) if s > 0]
    wsum = sum((w for _, w in pos), Fraction(0))
    if not pos:
        return {}
    quotas = [w * units / wsum for _, w in pos]
    parts = [int(q) for q in quotas]
    order = sorted(range(len(pos)), key=lambda j: (-(quotas[j] - parts[j]), j))
    for j in order[:units - sum(parts)]:
        parts[j] += 1
    return {i: p for (i, _), p in zip(pos, parts, strict=True) if p}


def test_integer_credit_equals_the_fraction_reference():
    rng = random.Random(1)
    for _ in range(3000):
        n = rng.randint(1, 25)
        scale = 10.0 ** rng.randint(-40, 40)
        scores = [rng.choice([0.0, -1.0, 1.0, 1.0]) * rng.random() * scale * 10.0 ** rng.randint(-8, 8)
                  for _ in range(n)]
        units = rng.choice([1, 7, 100, 1_000_000, rng.randint(0, 10**9)])
        assert credit(scores, units) == _reference_credit(scores, units), (scores, units)
    tiny = [5e-324, 1e-320, 2.2250738585072014e-308, 1.0, 1.7976931348623157e308]  # subnormal .. max
    assert credit(tiny, 10**6) == _reference_credit(tiny, 10**6)


def test_credit_rule():
    assert sum(credit([0.5, -2.0, 1.5, 0.0], 1_000_000).values()) == 1_000_000
    assert credit([0.5, -2.0, 1.5, 0.0], 1_000_000) == {0: 250_000, 2: 750_000}
    assert credit([-1.0, -2.0], 1_000_000) == {}
    assert credit([0.5, -2.0, 1.5], 100, sign=-1) == {1: 100}  # output "loss": lower is better
    assert credit([0.5, 3.0, 1.5], 7, rule="top") == {1: 7}
    assert credit([1e-30, 1e30], 1_000_000) == {1: 1_000_000}


def test_apply_twice_counts_once(redis_client, prefix, tmp_path):
    async def go():
        client = aioredis.from_url(REDIS_URL)
        ledger = Ledger(client, prefix, Journal(tmp_path / "j", 10), 3600)
        rec = new_record(3, {"a": 600_000, "b": 400_000}, {"a": 1, "b": 1}, 3600, "rec-1", now=7200.5)
        (first,), (again,) = await ledger.apply_many([rec]), await ledger.apply_many([rec])
        totals = await ledger.totals()
        per = await ledger.buckets([7200])
        await client.aclose()
        return first, again, totals, per

    first, again, totals, per = asyncio.run(go())
    assert (first, again) == (True, False)
    assert totals == ({"a": 600_000, "b": 400_000}, {"a": 1, "b": 1}, 3)
    assert per == [({"a": 600_000, "b": 400_000}, {"a": 1, "b": 1}, 3)]


def _evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_concurrent_records_share_script_calls_and_count_once(redis_client, prefix, tmp_path):
    """Group commit: 300 concurrent records (10 of them twice, as a retry
    would) cost far fewer than 300 script calls and add up exactly; two
    records with one id in one call count once."""
    rng = random.Random(2)
    recs = [new_record(rng.randint(1, 8), {s: rng.randint(1, 10**6) for s in rng.sample("abcdef", 3)},
                       {"a": 1}, 3600, f"g{i}", now=3600.0 * rng.randint(1, 3)) for i in range(300)]

    async def go():
        client = aioredis.from_url(REDIS_URL)
        ledger = Ledger(client, prefix, Journal(tmp_path / "j", 10), 3600)
        await ledger.apply_many([new_record(1, {}, {}, 3600, "warm-up")])  # loads the script
        before = _evalsha_calls(redis_client)
        where = await asyncio.gather(*(ledger.record(r) for r in recs + recs[:10]))
        calls = _evalsha_calls(redis_client) - before
        twin = new_record(0, {}, {}, 3600, "twin")
        dup = await ledger.apply_many([recs[0], twin, twin])
        totals = await ledger.totals()
        await ledger.stop()
        await client.aclose()
        return where, calls, dup, totals

    where, calls, dup, (credit_by, _, queries) = asyncio.run(go())
    assert where == ["redis"] * 310 and dup == [False, True, False]
    assert calls <= 310 // 4, calls
    want: dict[str, int] = {}
    for r in recs:
        for s, u in r["credit"].items():
            want[s] = want.get(s, 0) + u
    assert credit_by == want and queries == 1 + sum(r["queries"] for r in recs)


def test_journal_replay_interrupted_and_rerun_counts_once(redis_client, prefix, tmp_path):
    """A crash after applying a journal file but before deleting it: the
    rerun must not count anything twice."""

    async def go():
        client = aioredis.from_url(REDIS_URL)
        journal = Journal(tmp_path / "j", 100)
        ledger = Ledger(client, prefix, journal, 3600)
        for i in range(5):
            journal.append(new_record(1, {"s": 1000}, {"s": 1}, 3600, f"r{i}"))
        (path,) = journal.take()
        saved = path.read_text()
        assert await ledger.replay() == 5
        path.write_text(saved)  # as if the process died before the unlink
        journal.entries = 5
        assert await ledger.replay() == 0
        totals = await ledger.totals()
        await client.aclose()
        return totals, journal.entries

    totals, left = asyncio.run(go())
    assert totals == ({"s": 5000}, {"s": 5}, 5) and left == 0


def test_journal_is_bounded(tmp_path):
    j = Journal(tmp_path, 2, fsync=False)
    assert j.append({"id": 1}) and j.append({"id": 2}) and not j.append({"id": 3})
    assert Journal(tmp_path, 2).entries == 2  # counted again after a restart


def test_idempotency_key(server, train_x):
    base, _ = server
    body = {"queries": [query(train_x[1]), query(train_x[2])]}
    h = {"Idempotency-Key": "order-17"}
    first = httpx.post(base + "/v1/attributions", json=body, headers=h)
    again = httpx.post(base + "/v1/attributions", json=body, headers=h)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and again.headers["idempotent-replayed"] == "true"
    assert httpx.get(base + "/v1/sources").json()["total_queries"] == 2
    other = httpx.post(base + "/v1/attributions", json={"queries": [query(train_x[3])]}, headers=h)
    assert other.status_code == 422
    assert other.json()["error"]["fields"][0]["path"] == "Idempotency-Key"
    assert httpx.post(base + "/v1/attributions", json=body).json()["request_id"] != first.json()["request_id"]
    assert httpx.get(base + "/v1/sources").json()["total_queries"] == 4


def test_outage_journal_replay_exact_totals(settings_for, train_x, tmp_path):
    port, workdir = free_port(), tmp_path / "redis"
    workdir.mkdir()
    proc = start_redis(port, workdir)
    s = settings_for(redis_url=f"redis://127.0.0.1:{port}/0", redis_prefix="fa:", cache_ttl_s=60)
    sent = credited = 0

    def send(c: httpx.Client, i: int, key: str | None = None) -> None:
        nonlocal sent, credited
        n = 1 + i % 3
        body = {"queries": [query(train_x[(7 * i + j) % len(train_x)]) for j in range(n)], "top_k": 5}
        r = c.post("/v1/attributions", json=body, headers={"Idempotency-Key": key} if key else None)
        assert r.status_code == 200, r.text
        assert r.json()["recorded"] is True
        if r.headers.get("idempotent-replayed") != "true":
            sent += n
            credited += sum(1 for a in r.json()["attributions"] if a["sources"][0]["score"] > 0)

    try:
        with serve(s) as base, httpx.Client(base_url=base, timeout=30) as c:
            for i in range(6):
                send(c, i)
            proc.kill()
            proc.wait()
            for i in range(6, 16):
                send(c, i)
            send(c, 99, key="retry-me")
            send(c, 99, key="retry-me")  # retried during the outage: answered once, counted once
            ready = c.get("/readyz").json()
            assert ready["redis"] is False and ready["journal_entries"] == 11
            proc = start_redis(port, workdir)
            deadline = time.time() + 20
            while c.get("/readyz").json()["journal_entries"] and time.time() < deadline:
                time.sleep(0.1)
            send(c, 99, key="retry-me")  # and once more after the replay
            v = c.get("/v1/sources").json()
    finally:
        proc.kill()
        proc.wait()
    assert v["total_queries"] == sent
    assert sum(src["credit_units"] for src in v["sources"]) == credited * s.credit_units
    assert sum(src["queries"] for src in v["sources"]) >= credited


def test_journal_slots_are_exclusive_and_a_left_slot_is_adopted(redis_client, prefix, tmp_path):
    """Several serving processes share ``data_dir/journal``: each claims its
    own slot under an flock (slot 0 is the folder itself), a released slot
    is claimed again, and a slot left with records by a process that is gone
    is replayed once by a live process (``Ledger.adopt``), never while its
    owner lives."""
    root = tmp_path / "journal"
    a, b = Journal.claim(root, 10), Journal.claim(root, 10)
    assert (a.slot, a.dir, b.slot, b.dir) == (0, root, 1, root / "p1")
    recs = [new_record(1, {"x": 700_000, "y": 300_000}, {"x": 1, "y": 1}, 3600, f"left-{i}", now=3600.0)
            for i in range(3)]
    for r in recs:
        assert b.append(r)

    async def go():
        client = aioredis.from_url(REDIS_URL)
        ledger = Ledger(client, prefix, a, 3600)
        held = await ledger.adopt()  # b's owner lives: not touched
        b.release()  # its process is gone
        left = await ledger.adopt()
        again = await ledger.adopt()
        totals = await ledger.totals()
        await client.aclose()
        return held, left, again, totals

    held, left, again, totals = asyncio.run(go())
    assert (held, left, again) == (0, 3, 0)
    assert totals == ({"x": 2_100_000, "y": 900_000}, {"x": 3, "y": 3}, 3)
    assert not any(p.stat().st_size for p in (root / "p1").glob("*.jsonl"))
    c = Journal.claim(root, 10)  # the free slot is claimed again
    assert c.slot == 1 and c.entries == 0
    a.release()
    assert Journal.claim(root, 10).slot == 0
