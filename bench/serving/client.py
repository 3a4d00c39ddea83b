"""The load generator's side of the serving benchmarks: request bodies (digits inputs or any store's
query objects), pre-encoded HTTP/1.1 requests, a closed loop of keep-alive connections on raw asyncio
streams (so the client spends little of the shared CPU; each connection sends its next request when the
last is answered, bounded in requests and seconds), its summary (throughput, latency percentiles,
errors), the service's own figures (``/v1/stats``), and where its time goes (py-spy stacks by bucket)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np


# -- requests ---------------------------------------------------------------------------------------------------
def test_inputs() -> np.ndarray:
    from influence.datasets.vectors import load_digits_test

    return np.asarray(load_digits_test()[0], dtype=np.float32)


def request_bodies(queries: list[dict], qpr: int, count: int = 360, **options) -> list[bytes]:
    """``count`` JSON bodies of ``qpr`` queries each, cycling through
    ``queries`` (any store kind's query objects); options set to ``None``
    are left out (the service's default)."""
    out, i = [], 0
    for _ in range(count):
        qs = []
        for _ in range(qpr):
            qs.append(queries[i % len(queries)])
            i += 1
        out.append(json.dumps({"queries": qs, **{k: v for k, v in options.items() if v is not None}},
                              separators=(",", ":")).encode())
    return out


def bodies(X: np.ndarray, qpr: int, count: int = 360, **options) -> list[bytes]:
    """``count`` JSON bodies of ``qpr`` digits queries each, cycling through ``X``."""
    return request_bodies([{"input": [float(v) for v in x]} for x in X], qpr, count, **options)


BodiesFn = Callable[[int, str], list[bytes]]
"""``(queries per request, granularity) -> request bodies``: what a load run
sends (the digits test inputs by default, :func:`digits_bodies`)."""


def digits_bodies() -> BodiesFn:
    X = test_inputs()
    return lambda qpr, granularity: bodies(X, qpr, granularity=granularity)


def http_requests(base: str, raw: list[bytes]) -> list[bytes]:
    """Pre-encoded ``POST /v1/attributions`` requests of ``raw`` bodies."""
    host, port = base.split("//")[1].split(":")
    return [http_request(host, int(port), "/v1/attributions", b) for b in raw]


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed_loop(base: str, reqs: list[bytes], concurrency: int, duration_s: float, max_requests: int,
                      warmup_s: float = 0.5, check_every: int = 50) -> dict:
    """``concurrency`` connections, each sending the next request when the
    last is answered, for ``warmup_s + duration_s`` seconds or
    ``max_requests`` requests. Returns per-request (start, latency, status)
    of the measured window and a sample of decoded bodies."""
    host, port = base.split("//")[1].split(":")
    port = int(port)
    sent = 0
    t_start = time.perf_counter()
    t_end = t_start + warmup_s + duration_s
    records: list[tuple[float, float, int]] = []
    samples: list[dict] = []
    failures: Counter = Counter()

    async def conn():
        nonlocal sent
        reader = writer = None
        while True:
            if sent >= max_requests or time.perf_counter() >= t_end:
                break
            i = sent
            sent += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                t0 = time.perf_counter()
                writer.write(reqs[i % len(reqs)])
                status, headers, body = await _read_response(reader)
                t1 = time.perf_counter()
                if status == 200 and i % check_every == 0:
                    samples.append(json.loads(body))
                if status != 200:
                    failures[status] += 1
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError) as e:
                t1 = time.perf_counter()
                status = 0
                failures[type(e).__name__] += 1
                if writer is not None:
                    writer.close()
                writer = None
            records.append((t0 - t_start, t1 - t0, status))
        if writer is not None:
            writer.close()

    await asyncio.gather(*(conn() for _ in range(concurrency)))
    window = [r for r in records if r[0] >= warmup_s]
    return {"records": window, "samples": samples, "failures": dict(failures),
            "elapsed_s": (max((r[0] + r[1] for r in window), default=warmup_s) - warmup_s)}


def summarize(res: dict, qpr: int) -> dict:
    recs = res["records"]
    lat = np.array([r[1] for r in recs if r[2] == 200]) * 1000
    ok = len(lat)
    el = max(res["elapsed_s"], 1e-9)
    pct = (lambda q: float(np.percentile(lat, q))) if ok else (lambda q: None)
    return {"requests": len(recs), "ok": ok, "errors": len(recs) - ok,
            "error_rate": (len(recs) - ok) / len(recs) if recs else None,
            "throughput_qps": ok * qpr / el, "requests_per_s": ok / el,
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": float(lat.max()) if ok else None,
            "seconds": el, "failures": res["failures"]}


def stats(base: str) -> dict:
    import httpx

    return httpx.get(base + "/v1/stats", timeout=10).json()


def delta(before: dict, after: dict) -> dict:
    b = after["batches"] - before["batches"]
    hits = after["cache"]["hits"] - before["cache"]["hits"]
    miss = after["cache"]["misses"] - before["cache"]["misses"]
    read = miss  # queries that went to the readout
    return {"readout_batches": b, "queries_per_batch": read / b if b else None,
            "cache_hit_rate": hits / (hits + miss) if hits + miss else None,
            "readout_p50_ms": after["readout_ms"]["p50"]}


# -- profile ----------------------------------------------------------------------------------------------------
def profile_service(pid: int, seconds: float, out_raw: Path) -> subprocess.Popen | None:
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return None
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                             "--format", "raw", "--output", str(out_raw), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# Where the time goes. Each sample is walked from its leaf frame towards the
# root: the first frame in one of the SPECIFIC buckets names it (a Redis call
# made by the ledger counts as Redis; asyncio, starlette frames under it are
# the call's cost). Library layers are transparent on the way up; reaching
# the app's own shell (routes, middleware, main) first means the time was
# spent in the layer of the leaf-most library frame (GENERIC).
SPECIFIC = [
    ("readout (torch, readout thread)", ("influence/", "readout_rows", "Batcher._readout")),
    ("Redis client calls (cache, ledger)", ("redis/",)),
    ("credit split (largest remainder)", ("service/credit.py",)),
    ("request body: JSON parse + validation", ("fastapi/dependencies/utils.py", "pydantic", "json/decoder",
                                               "Request.json", "Request.body")),
    ("answer: JSON encode", ("starlette/responses.py", "json/encoder")),
    ("check(): JSON lists to a tensor", ("check (service/attribute.py",)),
    ("answer building: top-k", ("_answer (service/attribute.py",)),
    ("result cache and idempotency (Python side)", ("service/answers.py",)),
    ("stats", ("service/stats.py", "prometheus_client")),
    ("micro-batcher (event loop side)", ("service/batcher.py",)),
    ("ledger (Python side)", ("service/ledger.py",)),
    ("attribute() itself", ("service/attribute.py",)),
    ("thread pool hand-off", ("concurrent/futures", "threading.py")),
]
SHELL = ("service/app.py", "service/middleware.py", "service/routes/", "service/deps.py", "service/__main__.py",
         "<frozen runpy>")
GENERIC = [
    ("starlette/fastapi layers", ("starlette/", "fastapi/", "contextlib.py", "anyio/")),
    ("uvicorn + h11 (HTTP/1.1, pure Python)", ("uvicorn/", "h11/")),
    ("asyncio event loop + sockets", ("asyncio/", "selectors.py")),
]


def _bucket(frames: list[str]) -> str:
    lib = None
    for f in reversed(frames):
        for name, keys in SPECIFIC:
            if any(k in f for k in keys):
                return name
        if any(k in f for k in SHELL):
            break
        if lib is None:
            lib = next((name for name, keys in GENERIC if any(k in f for k in keys)), None)
    if lib is None and frames and any(k in frames[-1] for k in SHELL):
        return "app routes and middleware (service/routes, middleware.py)"
    return lib or "other"


def analyse_profile(raw: Path) -> dict:
    """Collapsed stacks -> share of samples per bucket, per file of the
    leaf frame, and the top leaf frames."""
    total = 0
    buckets: Counter = Counter()
    leaf: Counter = Counter()
    files: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        files[frames[-1].rpartition("(")[2].split(":")[0]] += n
        buckets[_bucket(frames)] += n
    if not total:
        return {"samples": 0, "buckets": {}, "top_self": [], "files": []}
    return {"samples": total, "buckets": {k: v / total for k, v in buckets.most_common()},
            "files": [(k, v / total) for k, v in files.most_common(15)],
            "top_self": [(k, v / total) for k, v in leaf.most_common(15)]}
