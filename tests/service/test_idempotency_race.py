"""Idempotency-Key under concurrency and outages (issue 19, finding 2).

The key is claimed in Redis together with the body's fingerprint before any
work: concurrent requests with the same key and another body get the
documented 422, never another body's answer, and the ledger counts what
the answers say was recorded; identical twins compute once and the others
replay it with ``Idempotent-Replayed: true`` (in one service and across
two); with Redis stopped or paused a retried key gets the answer it got
before, or a 503 when that answer is out of reach, never another one."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import redis

from .util import free_port, query, serve, start_redis, strip_volatile

URL = "/v1/attributions"


def _body(train_x, i: int, n: int = 2) -> dict:
    return {"queries": [query(train_x[(5 * i + j) % len(train_x)]) for j in range(n)], "top_k": 3}


async def _burst(bases: list[str], sends: list[tuple[int, str, dict]]) -> list[httpx.Response]:
    """All of ``sends`` ``(server index, key, body)`` at once."""
    clients = [httpx.AsyncClient(base_url=b, timeout=60) for b in bases]
    try:
        return await asyncio.gather(*[clients[i].post(URL, json=body, headers={"Idempotency-Key": key})
                                      for i, key, body in sends])
    finally:
        for c in clients:
            await c.aclose()


def _queries(base: str) -> int:
    return httpx.get(base + "/v1/sources").json()["total_queries"]


def test_same_key_different_bodies_concurrently(server, train_x):
    base, _ = server
    refs = {}
    for i in range(20):
        r = httpx.post(base + URL, json={**_body(train_x, i), "record": False})
        refs[i] = strip_volatile(r.json())["attributions"]
    sends = []
    for k in range(10):  # pair k: bodies 2k and 2k+1 under one key, interleaved
        sends += [(0, f"pair-{k}", _body(train_x, 2 * k)), (0, f"pair-{k}", _body(train_x, 2 * k + 1))]
    before = _queries(base)
    answers = asyncio.run(_burst([base], sends))
    recorded = 0
    for k in range(10):
        a, b = answers[2 * k], answers[2 * k + 1]
        assert sorted([a.status_code, b.status_code]) == [200, 422], (a.text[:200], b.text[:200])
        ok, i = (a, 2 * k) if a.status_code == 200 else (b, 2 * k + 1)
        bad = b if ok is a else a
        assert bad.json()["error"]["fields"][0] == {"path": "Idempotency-Key", "in": "header",
                                                    "reason": "was used before with a different request body"}
        assert strip_volatile(ok.json())["attributions"] == refs[i]  # its own body's answer
        recorded += len(ok.json()["attributions"]) * ok.json()["recorded"]
    assert _queries(base) - before == recorded == 20


def test_identical_twins_compute_once_and_replay(server, train_x):
    base, _ = server
    before = _queries(base)
    sends = [(0, f"twin-{k}", _body(train_x, k)) for _ in range(6) for k in range(10)]
    answers = asyncio.run(_burst([base], sends))
    assert all(r.status_code == 200 for r in answers), [r.text[:200] for r in answers if r.status_code != 200]
    for k in range(10):
        mine = [r for (_, key, _), r in zip(sends, answers, strict=True) if key == f"twin-{k}"]
        assert len({r.json()["request_id"] for r in mine}) == 1
        assert sorted(r.headers.get("idempotent-replayed", "") for r in mine) == [""] + ["true"] * 5
    assert _queries(base) - before == 10 * 2


def test_twins_across_two_services_compute_once(settings_for, train_x):
    with serve(settings_for()) as a, serve(settings_for(data_dir=settings_for().data_dir / "b")) as b:
        sends = [(n % 2, f"x-{k}", _body(train_x, k)) for n in range(4) for k in range(8)]
        sends += [(1, "x-0", _body(train_x, 99))]  # another body on the other process: 422
        answers = asyncio.run(_burst([a, b], sends))
        assert answers[-1].status_code == 422
        for k in range(8):
            mine = [r for (_, key, _), r in zip(sends[:-1], answers[:-1], strict=True) if key == f"x-{k}"]
            assert all(r.status_code == 200 for r in mine), [r.text[:200] for r in mine]
            assert len({r.json()["request_id"] for r in mine}) == 1
            assert [r.headers.get("idempotent-replayed") for r in mine].count(None) == 1
        assert _queries(a) == 8 * 2


def test_retries_during_a_redis_outage_get_the_same_answer(settings_for, train_x, tmp_path):
    port, workdir = free_port(), tmp_path / "redis"
    workdir.mkdir()
    proc = start_redis(port, workdir)
    url = f"redis://127.0.0.1:{port}/0"
    s = settings_for(redis_url=url, redis_prefix="fa:", idempotency_local_entries=8, redis_timeout_s=0.5)
    try:
        with serve(s) as base, httpx.Client(base_url=base, timeout=60) as c:
            first = {}
            for k in range(12):  # keys 0..3 leave the in-process store (8 entries), their fingerprints stay
                r = c.post(URL, json=_body(train_x, k), headers={"Idempotency-Key": f"k{k}"})
                assert r.status_code == 200
                first[k] = r.json()
            proc.kill()
            proc.wait()
            for k in range(4, 12):
                r = c.post(URL, json=_body(train_x, k), headers={"Idempotency-Key": f"k{k}"})
                assert r.status_code == 200 and r.json() == first[k] and r.headers["idempotent-replayed"] == "true"
            r = c.post(URL, json=_body(train_x, 0), headers={"Idempotency-Key": "k0"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "idempotency_unavailable", r.text
            assert "retry-after" in r.headers
            r = c.post(URL, json=_body(train_x, 50), headers={"Idempotency-Key": "k0"})
            assert r.status_code == 422  # another body: the kept fingerprint says so
            during = {}
            for k in (20, 21):  # new keys during the outage, retried and sent as concurrent twins
                twins = asyncio.run(_burst([base], [(0, f"k{k}", _body(train_x, k))] * 3))
                assert [t.status_code for t in twins] == [200] * 3
                assert len({t.json()["request_id"] for t in twins}) == 1
                during[k] = twins[0].json()
                again = c.post(URL, json=_body(train_x, k), headers={"Idempotency-Key": f"k{k}"})
                assert again.json() == during[k] and again.headers["idempotent-replayed"] == "true"
            proc = start_redis(port, workdir)
            deadline = time.time() + 20
            while not c.get("/readyz").json()["redis"] and time.time() < deadline:
                time.sleep(0.1)
            while c.get("/readyz").json()["journal_entries"] and time.time() < deadline:
                time.sleep(0.1)
            r = c.post(URL, json=_body(train_x, 0), headers={"Idempotency-Key": "k0"})
            assert r.status_code == 200 and r.json() == first[0]  # read from Redis again
            assert c.get("/v1/sources").json()["total_queries"] == 14 * 2  # each key counted once
        # the answers given during the outage reached Redis: another process replays them
        with serve(settings_for(redis_url=url, redis_prefix="fa:", data_dir=tmp_path / "other")) as other:
            deadline = time.time() + 10
            for k in (20, 21):
                r = httpx.post(other + URL, json=_body(train_x, k), headers={"Idempotency-Key": f"k{k}"})
                assert r.status_code == 200 and r.json() == during[k], r.text[:300]
    finally:
        proc.kill()
        proc.wait()


def test_twins_while_redis_is_paused_compute_once(settings_for, train_x, tmp_path):
    port = free_port()
    proc = start_redis(port)
    s = settings_for(redis_url=f"redis://127.0.0.1:{port}/0", redis_prefix="fa:", redis_timeout_s=0.5)
    try:
        with serve(s) as base:
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                twins = asyncio.run(_burst([base], [(0, "paused", _body(train_x, 3))] * 4))
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            assert [t.status_code for t in twins] == [200] * 4, [t.text[:200] for t in twins]
            assert len({t.json()["request_id"] for t in twins}) == 1
            assert [t.headers.get("idempotent-replayed") for t in twins].count(None) == 1
            deadline = time.time() + 20
            while httpx.get(base + "/readyz").json()["journal_entries"] and time.time() < deadline:
                time.sleep(0.1)
            assert redis.Redis(port=port).hget("fa:queries", "all") == b"2"
    finally:
        proc.kill()
        proc.wait()
