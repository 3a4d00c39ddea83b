"""``python -m bench.hostile``: the service's own attack suite (issue 19).

Starts its own services (``python -m service`` subprocesses on loopback: a
vector store and a text store, the tiny ones the tests use, built once into
``bench/.cache/hostile``) on a private Redis-compatible server (AOF on, so
it can be paused and restarted), all keys configured, and sends bounded sets
of hostile requests:

* ``bad_input``: every endpoint and parameter with extremes, wrong types,
  non-ASCII lookalikes, NUL bytes, huge arrays, huge headers and bodies;
  each must be a 4xx in the error shape (``fields`` present), never a 5xx;
* ``idempotency_*``: the same key with different bodies at once, identical
  twins at once, and keys retried while Redis is paused and while it is
  down and restarted; every answer must be its own body's, the same for a
  retried key, and the ledger must grow by exactly what the answers say
  was recorded (``lost``, ``double``);
* ``admin_reload``: paths, traversal and lookalike versions, a kind change;
* ``publisher_isolation``: a publisher key must see its own line only;
* ``whatif_extremes``: weights at and beyond the documented range, inputs
  that overflow the model: no ``null`` where a number is documented;
* ``slow_clients``: bodies declared and never sent, bodies dribbled, while
  ``/healthz`` is probed, and megabyte bodies while ``/healthz`` is probed.

Each record: ``{test, store_kind, requests, status_counts, five_xx, lost,
double, wrong_answers, max_ms}`` (plus ``readouts``: whether the requests
ran model readouts, and ``notes``); ``max_ms`` is the slowest request as the
client saw it (for ``slow_clients``: the slowest ``/healthz`` probe). Goal:
``five_xx``, ``lost``, ``double`` and ``wrong_answers`` zero everywhere, and
no request without a readout above 100 ms. Written to
``bench/results/hostile.json``; ``--write-md`` also writes the "Hostile
suite" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.harness.common import CACHE, ROOT, machine, write_json
from bench.harness.service import free_port, service

STORES = CACHE / "hostile"
KEYS = {"FA_QUERY_KEYS": "q-key", "FA_REPORT_KEYS": "r-key", "FA_ADMIN_KEYS": "a-key"}
Q, R, A = ({"Authorization": f"Bearer {k}"} for k in ("q-key", "r-key", "a-key"))
SETTINGS = {"env_extra": {**KEYS, "OMP_NUM_THREADS": "1"}, "torch_threads": 1, "max_wait_ms": 1,
            "replay_interval_s": 0.2, "redis_timeout_s": 0.5, "body_timeout_s": 2}
"""The services' settings besides the stores and keys: one thread, batches that wait 1 ms, a quick journal
replay, short Redis and body timeouts (so the outage and slow-client tests take seconds)."""
NUMBERS = {"change", "mean_change", "score", "probability", "logprob"}  # documented as numbers, never null


@dataclass
class Rec:
    test: str
    store_kind: str
    readouts: bool = False
    requests: int = 0
    status_counts: Counter = field(default_factory=Counter)
    five_xx: int = 0
    lost: int = 0
    double: int = 0
    wrong_answers: int = 0
    max_ms: float = 0.0
    notes: list[str] = field(default_factory=list)
    slowest: str = ""

    def saw(self, status: int, ms: float, what: str = "") -> None:
        self.requests += 1
        self.status_counts[str(status)] += 1
        self.five_xx += status >= 500 and status not in (503,)  # 503 + Retry-After is a documented answer
        if ms > self.max_ms:
            self.max_ms, self.slowest = ms, f"slowest: {what[:80]} -> {status} in {ms:.0f} ms"

    def wrong(self, why: str) -> None:
        self.wrong_answers += 1
        if len(self.notes) < 8:
            self.notes.append(why[:300])

    def out(self) -> dict:
        return {"test": self.test, "store_kind": self.store_kind, "requests": self.requests,
                "status_counts": dict(sorted(self.status_counts.items())), "five_xx": self.five_xx, "lost": self.lost,
                "double": self.double, "wrong_answers": self.wrong_answers, "max_ms": round(self.max_ms, 1),
                "readouts": self.readouts, "notes": self.notes + ([self.slowest] if self.slowest else [])}


# ---- setup: stores, Redis, services -------------------------------------------------------------------------------
def stores() -> dict[str, Path]:
    """The tiny vector and text stores (built once, seconds each)."""
    sys.path.insert(0, str(ROOT))
    from tests.text_corpus import TINY_TEXT_STORE, build_text_store
    from worker.config import load_config
    from worker.pipeline import build

    vec, txt = STORES / "vector", STORES / "text"
    if not (vec / "CURRENT").exists():
        build(load_config("tiny", overrides=[f'store.root="{vec}"']), progress=False)
    if not (txt / "store" / "CURRENT").exists():
        txt.mkdir(parents=True, exist_ok=True)
        build_text_store(txt, *TINY_TEXT_STORE)
    return {"vector": vec, "text": txt / "store"}


class RedisServer:
    """A private Redis-compatible server on loopback, durable (AOF, fsync always)."""

    def __init__(self, workdir: Path):
        sys.path.insert(0, str(ROOT))
        from tests.service.util import redis_binary

        self.bin, self.dir, self.port = redis_binary(), workdir, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen([self.bin, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@dataclass
class Target:
    kind: str
    base: str
    sources: list[str]
    good: list[dict]  # valid queries of this store's form
    publisher: str  # publisher-00's key maps to this source

    def body(self, i: int, n: int = 1, **over) -> dict:
        return {"queries": [self.good[(3 * i + j) % len(self.good)] for j in range(n)], "top_k": 3, **over}


def _good_queries(kind: str, store: Path) -> list[dict]:
    if kind == "text":
        words = [f"w{i}" for i in range(60)] + [f"s{s}x{i}" for s in range(3) for i in range(15)]
        return [{"text": " ".join(words[(7 * i + k) % len(words)] for k in range(3 + i % 9))} for i in range(40)]
    from influence.store import open_store

    x = open_store(store).X
    return [{"input": [float(v) for v in x[i]]} for i in range(40)]


# ---- helpers ---------------------------------------------------------------------------------------------------------
async def send(c: httpx.AsyncClient, rec: Rec, method: str, url: str, **kw) -> httpx.Response:
    t0 = time.perf_counter()
    r = await c.request(method, url, **kw)
    size = len(kw.get("content") or b"") or len(json.dumps(kw.get("json"))) if "json" in kw or "content" in kw else 0
    rec.saw(r.status_code, (time.perf_counter() - t0) * 1000, f"{method} {url} ({size:,} bytes)")
    return r


def error_shape_ok(r: httpx.Response) -> bool:
    try:
        err = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(err.get("fields"), list) and err.get("status") == r.status_code and "Traceback" not in r.text


def nulls(x, key: str = "") -> int:
    """Documented numbers that are null or not finite."""
    if isinstance(x, dict):
        return sum(nulls(v, k) for k, v in x.items())
    if isinstance(x, list):
        return sum(nulls(v, key) for v in x)
    if x is None:
        return key in NUMBERS
    return isinstance(x, float) and not math.isfinite(x)


def volatile_free(body: dict) -> list:
    return [{k: v for k, v in a.items() if k != "cached"} for a in body["attributions"]]


async def total_queries(c: httpx.AsyncClient) -> int:
    for _ in range(100):
        r = await c.get("/v1/sources", headers=R)
        if r.status_code == 200:
            return r.json()["total_queries"]
        await asyncio.sleep(0.2)
    raise RuntimeError(f"/v1/sources: {r.status_code}")


async def settled(c: httpx.AsyncClient, timeout: float = 30) -> None:
    """Redis reachable again and the journal replayed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ready = (await c.get("/readyz")).json()
        if ready.get("redis") and not ready.get("journal_entries"):
            return
        await asyncio.sleep(0.2)


# ---- tests -------------------------------------------------------------------------------------------------------
def bad_cases(t: Target) -> list[tuple[str, str, dict, set[int]]]:
    """(method, path, httpx kwargs, accepted statuses) of hostile requests."""
    J = {"content-type": "application/json"}
    good = t.good[0]
    other = {"text": "a b c"} if t.kind == "vector" else {"input": [0.5] * 64}
    huge_ones = b'{"queries":[' + b",".join([b"1"] * 490_000) + b"]}"
    huge_empty = b'{"queries":[' + b",".join([b"{}"] * 300_000) + b"]}"
    rep = {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z", "amount": "10", "currency": "EUR"}
    cases: list[tuple[str, str, dict, set[int]]] = []

    def post(path, json_=None, content=None, headers=Q, ok=frozenset({422})):
        kw = {"headers": {**(J if content is not None else {}), **headers}}
        kw["json" if content is None else "content"] = json_ if content is None else content
        cases.append(("POST", path, kw, set(ok)))

    for path in ("/v1/attributions", "/v1/whatif"):
        extra = {} if path == "/v1/attributions" else {"remove": [t.sources[0]]}
        post(path, content=huge_ones)
        post(path, content=huge_empty)
        post(path, {"queries": [{"input": [0.5] * 100_000}], **extra})
        post(path, {"queries": [good] * 65, **extra})
        post(path, {"queries": [other], **extra})
        post(path, {"queries": [{}], **extra})
        post(path, {"queries": [{**good, **other}], **extra})
        post(path, {"queries": [good], **{f"x{i}": i for i in range(2000)}, **extra})
        post(path, content=b'{"queries": [{"input": [NaN]}]}')
        post(path, content=b'{"queries": [' + b"[" * 5000 + b"]" * 5000 + b"]}")
        post(path, content=json.dumps({"queries": [good]}).encode("utf-16"))
        post(path, content=json.dumps({"queries": [good]}).encode(), headers={**Q, "content-type":
                                                                               "application/json; charset=utf-16"},
             ok={415})
        post(path, content=b"queries=1", headers={**Q, "content-type": "text/plain"}, ok={415})
        post(path, {"queries": [good]}, headers={}, ok={401})
        post(path, {"queries": [good]}, headers={"Authorization": "Bearer nope\u0131".encode()}, ok={403})
        post(path, {"queries": [{"input": [3e38] * 64}] if t.kind == "vector" else
             [{"text": "\x00 \u202e w1 " * 10}], **extra}, ok={200, 422})
        post(path, {"queries": [{"text": "w1 " * 5000}] if t.kind == "text" else [{"input": ["1"] * 64}], **extra})
        post(path, {"queries": [{**good, "client_id": "x" * 10_000}], **extra})
    post("/v1/attributions", {"queries": [good], "top_k": 10**9})
    post("/v1/attributions", {"queries": [good], "top_k": True})
    post("/v1/attributions", {"queries": [good], "top_k": "5"})
    post("/v1/attributions", {"queries": [good], "granularity": "pixels"})
    post("/v1/attributions", {"queries": [good], "output": "accuracy"})
    post("/v1/attributions", {"queries": [good], "record": "yes"})
    if t.kind == "vector":
        for target in (-1, 10, 10**30, "3", 3.0):
            post("/v1/attributions", {"queries": [{**good, "target": target}]})
    for w in (1e308, -1, "2", 1000.5):
        post("/v1/whatif", {"sample": 2, "weights": {t.sources[0]: w}} if t.kind == "vector" else
             {"queries": [good], "weights": {t.sources[0]: w}})
    post("/v1/whatif", content=b'{"sample": 2, "weights": {"%s": 1e309}}' % t.sources[0].encode())
    post("/v1/whatif", {"sample": 2, "remove": [t.sources[0]] * 50_000})
    post("/v1/whatif", {"sample": 10**9, "remove": [t.sources[0]]})
    post("/v1/whatif", {"sample": 2, "queries": [good], "remove": [t.sources[0]]})
    post("/v1/whatif", {"remove": ["nobody\u0000"]})
    for k, v in (("currency", "ınr"), ("currency", "ſek"), ("currency", "uſd"), ("currency", "EUR\x00"),
                 ("currency", "€"), ("amount", "1e999999"), ("amount", "NaN"), ("amount", "-1"), ("amount", "1_000"),
                 ("amount", "١٠"), ("start", "2026-12-01T00:00:00Z\x00"), ("start", "9998-12-31T23:00:00.000001Z"),
                 ("start", "0000-01-01"), ("end", "10000-01-01"), ("end", "2026-10-01T00:00:00Z"),
                 ("start", "2026-11-01T00:00:00+99:00"), ("format", "xml")):
        cases.append(("GET", "/v1/reports/compensation", {"params": {**rep, k: v}, "headers": R}, {422}))
    for sid in ("\x00", "x" * 5000, "../../etc/passwd", "ſource"):
        cases.append(("GET", f"/v1/sources/{quote(sid, safe='')}", {"headers": R}, {404}))
    # (the 1 MB header and the 2,000 headers go as raw bytes: ``raw_cases``; httpx takes ~100 ms to build them)
    cases.append(("GET", "/v1/store", {"headers": {"X-API-Key": "k\u00e9y".encode()}}, {403}))
    cases.append(("GET", "/v1/stats", {"headers": {"Authorization": "Bearer"}}, {401}))
    for n in ("-1", "1e9", "99999999999999999999", "\u0661"):
        cases.append(("GET", "/v1/playground/examples", {"params": {"n": n}, "headers": Q}, {404, 422}))
        cases.append(("GET", f"/v1/playground/training/{quote(n)}", {"headers": Q}, {404, 422}))
    for path in ("/v1/attributions", "/v1/admin/reload"):
        cases.append(("DELETE", path, {"headers": A}, {405}))
    cases.append(("GET", "/v1/nothing%00", {}, {404}))
    return cases


RAW_CASES = {  # request bytes prepared before the clock starts -> accepted statuses
    "GET /healthz with a 1 MB header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000
                                        + b"\r\nConnection: close\r\n\r\n", {431}),
    "GET /healthz with 2,000 headers": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                        + b"".join(b"X-H%d: 1\r\n" % i for i in range(2000))
                                        + b"Connection: close\r\n\r\n", {431}),
    "POST /v1/attributions with a NUL in the key": (b"POST /v1/attributions HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                                    b"Bearer q-key\x00\r\nContent-Length: 0\r\nConnection: "
                                                    b"close\r\n\r\n", {400, 403}),
}


async def raw(base: str, request: bytes) -> tuple[int, bytes]:
    host, port = base.split("//")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]) if head else 0, body


async def bad_input(t: Target) -> Rec:
    rec = Rec("bad_input", t.kind)
    for what, (request, ok) in RAW_CASES.items():
        t0 = time.perf_counter()
        status, body = await raw(t.base, request)
        rec.saw(status, (time.perf_counter() - t0) * 1000, what)
        if status not in ok:
            rec.wrong(f"{what}: {status}, expected {sorted(ok)}: {body[:150]!r}")
        elif status >= 400 and status != 400 and b'"fields"' not in body:
            rec.wrong(f"{what}: error body without fields: {body[:150]!r}")
    async with httpx.AsyncClient(base_url=t.base, timeout=60) as c:
        for method, path, kw, ok in bad_cases(t):
            r = await send(c, rec, method, path, **kw)
            if r.status_code not in ok:
                rec.wrong(f"{method} {path[:60]} -> {r.status_code}, expected {sorted(ok)}: {r.text[:150]}")
            elif r.status_code >= 400 and not error_shape_ok(r):
                rec.wrong(f"{method} {path[:60]}: error body without fields: {r.text[:150]}")
            elif r.status_code == 200 and nulls(r.json()):
                rec.wrong(f"{method} {path[:60]}: null numbers in a 200")
            elif r.status_code == 422 and len(r.content) > 8000:
                rec.wrong(f"{method} {path[:60]}: {len(r.content)}-byte error body")
        for path in ("/healthz", "/readyz", "/v1/store", "/v1/sources", "/openapi.json"):  # HEAD is GET, no body
            r = await send(c, rec, "HEAD", path, headers=R)
            if r.status_code != 200 or r.content:
                rec.wrong(f"HEAD {path} -> {r.status_code}, {len(r.content)} bytes")
    return rec


async def idem_different_bodies(t: Target, pairs: int = 12) -> Rec:
    rec = Rec("idempotency_same_key_other_body", t.kind, readouts=True)
    tag = f"{t.kind}-{time.time_ns()}"
    async with httpx.AsyncClient(base_url=t.base, timeout=60) as c:
        refs = [volatile_free((await c.post("/v1/attributions", json=t.body(i, 2, record=False), headers=Q)).json())
                for i in range(2 * pairs)]
        before = await total_queries(c)
        sends = [(f"diff-{tag}-{k}", 2 * k + s) for k in range(pairs) for s in (0, 1)]
        answers = await asyncio.gather(*[send(c, rec, "POST", "/v1/attributions", json=t.body(i, 2),
                                              headers={**Q, "Idempotency-Key": key}) for key, i in sends])
        recorded = set()
        for k in range(pairs):
            a, b = answers[2 * k], answers[2 * k + 1]
            if sorted([a.status_code, b.status_code]) != [200, 422]:
                rec.wrong(f"pair {k}: {a.status_code} and {b.status_code}")
            for r, i in ((a, 2 * k), (b, 2 * k + 1)):
                if r.status_code == 200:
                    if volatile_free(r.json()) != refs[i]:
                        rec.wrong(f"pair {k}: an answer that is not its own body's")
                    if r.json()["recorded"]:
                        recorded.add((r.json()["request_id"], len(r.json()["attributions"])))
        grew, claimed = await total_queries(c) - before, sum(n for _, n in recorded)
    rec.lost, rec.double = max(0, claimed - grew), max(0, grew - claimed)
    return rec


async def idem_twins(t: Target, keys: int = 8, twins: int = 5) -> Rec:
    rec = Rec("idempotency_identical_twins", t.kind, readouts=True)
    tag = f"{t.kind}-{time.time_ns()}"
    async with httpx.AsyncClient(base_url=t.base, timeout=60) as c:
        before = await total_queries(c)
        sends = [(f"twin-{tag}-{k}", k) for _ in range(twins) for k in range(keys)]
        answers = await asyncio.gather(*[send(c, rec, "POST", "/v1/attributions", json=t.body(i, 2),
                                              headers={**Q, "Idempotency-Key": key}) for key, i in sends])
        for k in range(keys):
            mine = [r for (key, _), r in zip(sends, answers, strict=True) if key == f"twin-{tag}-{k}"]
            if any(r.status_code != 200 for r in mine) or len({r.json()["request_id"] for r in mine}) != 1:
                rec.wrong(f"key {k}: {[r.status_code for r in mine]}, answers differ")
            elif [r.headers.get("idempotent-replayed") for r in mine].count("true") != twins - 1:
                rec.wrong(f"key {k}: {twins - 1} replays expected")
        grew = await total_queries(c) - before
    rec.lost, rec.double = max(0, keys * 2 - grew), max(0, grew - keys * 2)
    return rec


async def idem_outage(t: Target, redis: RedisServer, how: str, keys: int = 10, new: int = 5) -> Rec:
    """Keys answered with Redis up, retried (with new keys and their twins)
    while it is paused or down, then again after it is back."""
    rec = Rec(f"idempotency_redis_{how}", t.kind, readouts=True)
    tag = f"{t.kind}-{how}-{time.time_ns()}"
    first: dict[str, dict] = {}

    async def post(c, key, i):
        r = await send(c, rec, "POST", "/v1/attributions", json=t.body(i, 2), headers={**Q, "Idempotency-Key": key})
        if r.status_code == 422 and key.startswith("d-"):
            return r
        if r.status_code == 200:
            if key in first and r.json() != first[key]:
                rec.wrong(f"{key}: another answer than before ({r.json()['request_id']} vs "
                          f"{first[key]['request_id']})")
            first.setdefault(key, r.json())
        elif r.status_code not in (409, 503):
            rec.wrong(f"{key}: {r.status_code} {r.text[:150]}")
        return r

    async with httpx.AsyncClient(base_url=t.base, timeout=60) as c:
        await settled(c)
        before = await total_queries(c)
        for k in range(keys):
            await post(c, f"o-{tag}-{k}", k)
        (redis.pause if how == "paused" else redis.stop)()
        try:
            t0 = time.time()
            got = await asyncio.gather(*[post(c, f"o-{tag}-{k}", k) for k in range(keys)],
                                       *[post(c, f"n-{tag}-{k}", 100 + k) for k in range(new) for _ in range(2)],
                                       *[post(c, f"d-{tag}-{k}", 200 + 2 * k + b) for k in range(3) for b in (0, 1)])
            for k in range(3):  # the same key with two bodies at once, during the outage: one answer, one 422
                pair = got[keys + 2 * new + 2 * k:keys + 2 * new + 2 * k + 2]
                if sorted(r.status_code for r in pair) != [200, 422]:
                    rec.wrong(f"d-{k} during the outage: {[r.status_code for r in pair]}")
            await asyncio.gather(*[post(c, f"n-{tag}-{k}", 100 + k) for k in range(new)])
            await asyncio.sleep(max(0.0, 3.0 - (time.time() - t0)))
        finally:
            (redis.resume if how == "paused" else redis.start)()
        await settled(c)
        for k in range(keys):
            await post(c, f"o-{tag}-{k}", k)
        for k in range(new):
            await post(c, f"n-{tag}-{k}", 100 + k)
        grew = await total_queries(c) - before
    expected = 2 * sum(1 for b in first.values() if b["recorded"])
    rec.lost, rec.double = max(0, expected - grew), max(0, grew - expected)
    rec.notes.append(f"{len(first)} keys answered; ledger grew by {grew} queries, answers say {expected}")
    return rec


async def admin_reload(t: Target, other_store: Path) -> Rec:
    rec = Rec("admin_reload", t.kind)
    bad = [str(other_store / "versions" / "v000001"), "../../text/store/versions/v000001", "..%2Fv000001",
           "v000001/../v000001", "v000001\x00", "v000001\n", "V000001", "v\u0660\u0660\u0660\u0660\u0660\u0661",
           "v1", "", " v000001", "/etc/passwd", "v000001;rm", "C:\\v000001"]
    async with httpx.AsyncClient(base_url=t.base, timeout=60) as c:
        kind = (await c.get("/v1/store", headers=A)).json()["model"]["kind"]
        for v in bad:
            r = await send(c, rec, "POST", "/v1/admin/reload", params={"version": v}, headers=A)
            if r.status_code != 422 or not error_shape_ok(r) or r.json()["error"]["fields"][0]["path"] != "version":
                rec.wrong(f"version={v!r}: {r.status_code} {r.text[:150]}")
        r = await send(c, rec, "POST", "/v1/admin/reload", params={"version": "v000777"}, headers=A)
        if r.status_code != 404:
            rec.wrong(f"v000777: {r.status_code}")
        r = await send(c, rec, "POST", "/v1/admin/reload", params={"version": "v000002"}, headers=A)
        if r.status_code != 409:  # v000002 is the other kind (set up so)
            rec.wrong(f"kind change: {r.status_code} {r.text[:150]}")
        for key in (Q, R, {}):
            r = await send(c, rec, "POST", "/v1/admin/reload", params={"version": "v000002",
                                                                      "allow_kind_change": "true"}, headers=key)
            if r.status_code not in (401, 403):
                rec.wrong(f"reload without an admin key: {r.status_code}")
        if (await c.get("/v1/store", headers=A)).json()["model"]["kind"] != kind:
            rec.wrong("the served kind changed")
    return rec


async def publisher_isolation(t: Target) -> Rec:
    rec = Rec("publisher_isolation", t.kind)
    P = {"Authorization": "Bearer p0-key"}
    others = [s for s in t.sources if s != t.publisher]
    rep = {"start": "2000-01-01", "end": "2100-01-01", "amount": "100.00", "currency": "EUR"}
    async with httpx.AsyncClient(base_url=t.base, timeout=60) as c:
        await c.post("/v1/attributions", json=t.body(0, 4), headers=Q)  # some credit for everyone to see
        r = await send(c, rec, "GET", "/v1/sources", headers=P)
        if r.status_code != 200 or {s["id"] for s in r.json()["sources"]} - {t.publisher}:
            rec.wrong(f"/v1/sources shows {[s['id'] for s in r.json().get('sources', [])]}")
        for sid in others + [o.upper() for o in others] + [f" {others[0]}", f"{others[0]}\x00"]:
            r = await send(c, rec, "GET", f"/v1/sources/{quote(sid, safe='')}", headers=P)
            if r.status_code not in (403, 404):
                rec.wrong(f"/v1/sources/{sid!r}: {r.status_code}")
        for fmt in ("json", "csv"):
            r = await send(c, rec, "GET", "/v1/reports/compensation", params={**rep, "format": fmt}, headers=P)
            seen = ({ln["source_id"] for ln in r.json()["lines"]} if fmt == "json" else
                    {row.split(",")[2] for row in r.text.splitlines()[1:]})
            if r.status_code != 200 or seen - {t.publisher}:
                rec.wrong(f"report ({fmt}) shows {sorted(seen)}")
        r = await send(c, rec, "GET", "/v1/store", headers=P)
        if r.status_code != 200 or r.json()["root"] is not None:
            rec.wrong("/v1/store shows the store root to a publisher")
        for method, path, kw in (("GET", "/v1/stats", {}), ("POST", "/v1/attributions", {"json": t.body(1)}),
                                 ("POST", "/v1/whatif", {"json": {"queries": [t.good[0]], "remove": [others[0]]}}),
                                 ("POST", "/v1/admin/reload", {})):
            r = await send(c, rec, method, path, headers=P, **kw)
            if r.status_code != 403:
                rec.wrong(f"{method} {path}: {r.status_code} for a publisher key")
    return rec


async def whatif_extremes(t: Target) -> Rec:
    rec = Rec("whatif_extremes", t.kind, readouts=True)
    s0, s1 = t.sources[0], t.sources[1]
    inline = [t.good[0], t.good[1]]
    bodies = [{"weights": {s0: w}} for w in (0, 1e-300, 5e-324, 999.999999, 1000, 2)]
    bodies += [{"weights": {s0: 1000, s1: 1000}}, {"remove": t.sources[:-1]}, {"remove": t.sources}]
    async with httpx.AsyncClient(base_url=t.base, timeout=120) as c:
        for b in bodies:
            for where in ({"queries": inline}, {"sample": 64} if t.kind == "vector" else {"queries": inline * 32}):
                r = await send(c, rec, "POST", "/v1/whatif", json={**b, **where}, headers=Q)
                if r.status_code != 200 or nulls(r.json()) or r.json()["mean_change"] is None:
                    rec.wrong(f"{b} -> {r.status_code}, {r.text[:150]}")
        extremes = ([{"input": [v] * 64} for v in (3e38, -3e38, 1e38, 1e-45, 0.0)] if t.kind == "vector" else
                    [{"text": "w1 " * 64 + "w2"}, {"text": "w1 w2"}, {"text": "\U0001f600 " * 10},
                     {"prompt": "w1", "completion": "zzz " * 63}])
        for q in extremes:
            for path, body in (("/v1/whatif", {"queries": [q], "weights": {s0: 1000}}),
                               ("/v1/attributions", {"queries": [q], "granularity": "both", "record": False})):
                r = await send(c, rec, "POST", path, json=body, headers=Q)
                if r.status_code not in (200, 422) or (r.status_code == 200 and nulls(r.json())):
                    rec.wrong(f"{path} {str(q)[:40]} -> {r.status_code} {r.text[:150]}")
    return rec


async def _stall(host: str, port: int, dribble: bool) -> tuple[int, float]:
    """A client that declares a 1,000-byte body and sends nothing (or one byte
    every 0.3 s); -> (status, seconds until the answer)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/attributions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer q-key\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    await writer.drain()

    async def drip():
        while dribble:
            await asyncio.sleep(0.3)
            writer.write(b" ")
            await writer.drain()

    dripper = asyncio.create_task(drip())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 30)
        return int(head.split()[1]), time.perf_counter() - t0
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return 0, time.perf_counter() - t0
    finally:
        dripper.cancel()
        writer.close()


async def _probe(c: httpx.AsyncClient, rec: Rec, until: asyncio.Task, lat: list[float]) -> None:
    while not until.done():
        t0 = time.perf_counter()
        r = await c.get("/healthz")
        lat.append((time.perf_counter() - t0) * 1000)
        rec.saw(r.status_code, lat[-1], "GET /healthz")
        await asyncio.sleep(0.02)


async def slow_clients(t: Target, stalls: int = 16) -> Rec:
    rec = Rec("slow_clients_and_big_bodies", t.kind)
    host, port = t.base.split("//")[1].split(":")
    huge = b'{"queries":[' + b",".join([b"1"] * 490_000) + b"]}"
    async with \
            httpx.AsyncClient(base_url=t.base, timeout=60) as probe:
        lat: list[float] = []
        clients = asyncio.ensure_future(asyncio.gather(*[_stall(host, int(port), i % 2 == 1) for i in range(stalls)]))
        await _probe(probe, rec, clients, lat)
        for status, secs in clients.result():
            rec.requests += 1
            rec.status_counts[str(status)] += 1
            if status != 408 or secs > 2 + 3:
                rec.wrong(f"stalled body: {status} after {secs:.1f} s (body_timeout_s 2)")

        def big():  # in a thread with its own client: the probe's event loop stays the probe's
            with httpx.Client(base_url=t.base, timeout=60) as sync:
                for i in range(10):
                    r = sync.post(("/v1/attributions", "/v1/whatif")[i % 2], content=huge,
                                  headers={**Q, "content-type": "application/json"})
                    rec.requests += 1
                    rec.status_counts[str(r.status_code)] += 1
                    if r.status_code != 422 or len(r.content) > 8000:
                        rec.wrong(f"1 MB body: {r.status_code}, {len(r.content)} bytes")

        senders = asyncio.ensure_future(asyncio.gather(asyncio.to_thread(big), asyncio.to_thread(big)))
        lat2: list[float] = []
        await _probe(probe, rec, senders, lat2)
        senders.result()
    lat.sort()
    lat2.sort()
    rec.notes.append(f"/healthz while {stalls} bodies stalled: {len(lat)} probes, median {lat[len(lat) // 2]:.1f} ms, "
                     f"max {lat[-1]:.1f} ms")
    rec.notes.append(f"/healthz while 1 MB bodies were refused: {len(lat2)} probes, median "
                     f"{lat2[len(lat2) // 2]:.1f} ms, max {lat2[-1]:.1f} ms")
    return rec


# ---- run ----------------------------------------------------------------------------------------------------
def _stage_vector_root(vec: Path, txt: Path, work: Path) -> Path:
    """A private copy of the vector store whose v000002 is the text store's
    version (a reload to it is a kind change)."""
    root = work / "vector-root"
    shutil.copytree(vec, root)
    cur = (txt / "CURRENT").read_text().strip()
    dst = root / "versions" / "v000002"
    shutil.copytree(txt / "versions" / cur, dst)
    man = json.loads((dst / "manifest.json").read_text())
    man["version"] = "v000002"
    (dst / "manifest.json").write_text(json.dumps(man))
    return root


async def run_all(work: Path) -> tuple[list[dict], float]:
    st = stores()
    redis = RedisServer(work / "redis")
    redis.dir.mkdir()
    redis.start()
    records: list[Rec] = []
    t0 = time.time()
    try:
        vroot = _stage_vector_root(st["vector"], st["text"], work)
        with service(vroot, redis.url, **SETTINGS, publisher_keys="p0-key:publisher-00") as (vb, _, _), \
                service(st["text"], redis.url, **SETTINGS, publisher_keys="p0-key:pub-0") as (tb, _, _):
            targets = []
            for kind, base, root in (("vector", vb, vroot), ("text", tb, st["text"])):
                ids = httpx.get(base + "/v1/store", headers=A).json()["source_ids"]
                targets.append(Target(kind, base, ids, _good_queries(kind, root),
                                      "publisher-00" if kind == "vector" else "pub-0"))
            for t in targets:
                for test in (bad_input, idem_different_bodies, idem_twins, publisher_isolation, whatif_extremes):
                    print(f"{t.kind:6s} {test.__name__} ...", file=sys.stderr, flush=True)
                    records.append(await test(t))
                print(f"{t.kind:6s} slow_clients ...", file=sys.stderr, flush=True)
                records.append(await slow_clients(t))
            records.append(await admin_reload(targets[0], st["text"]))
            for how in ("paused", "restarted"):
                for t in targets:
                    print(f"{t.kind:6s} idempotency, redis {how} ...", file=sys.stderr, flush=True)
                    records.append(await idem_outage(t, redis, how))
    finally:
        redis.stop()
    return [r.out() for r in records], time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-md", action="store_true", help="write the Hostile suite section of BENCHMARKS.md")
    args = ap.parse_args(argv)
    mach = machine()
    with tempfile.TemporaryDirectory(prefix="fa-hostile-") as tmp:
        records, secs = asyncio.run(run_all(Path(tmp)))
    bad = [r for r in records if r["five_xx"] or r["lost"] or r["double"] or r["wrong_answers"]]
    res = {"command": "python -m bench.hostile" + (" --write-md" if args.write_md else ""), "date": mach["date"],
           "machine": mach, "seconds": round(secs, 1), "total_requests": sum(r["requests"] for r in records),
           "goal": {"met": not bad, "failing": [f"{r['test']}/{r['store_kind']}" for r in bad],
                    "max_ms_without_readouts": max((r["max_ms"] for r in records if not r["readouts"]), default=0)},
           "records": records}
    path = write_json("hostile.json", res)
    print(f"{path}: {res['total_requests']} requests in {secs:.0f} s; goal {'met' if not bad else 'NOT met'}"
          + (f" (failing: {', '.join(res['goal']['failing'])})" if bad else ""))
    if args.write_md:
        from bench.serving import reports

        reports.main(["hostile", "--json", str(path)])
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
