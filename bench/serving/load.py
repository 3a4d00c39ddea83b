"""``python -m bench.serving.load``: a load generator against the real service.

The service runs as its own process (``python -m service`` on a free
loopback port, the digits store, the Redis at ``--redis-url`` under a fresh
key prefix that is deleted afterwards). The load generator is a closed loop
of ``concurrency`` keep-alive HTTP/1.1 connections on raw asyncio streams
(pre-encoded requests, so the client spends little of the shared CPU), each
sending its next request when the last is answered; every run is bounded in
requests and seconds and stops by itself. Requests are the default
attribution request (granularity ``sources``, ``top_k`` 10, recorded) with
``queries_per_request`` digits test inputs each, cycling through the 360
test inputs (so with the cache on, answers repeat and hit it).

For every combination of batching on/off and cache on/off (one service
process each), at concurrency 1, 8, 32, 128 and 1 or 8 queries per request:
throughput (queries/s), p50/p95/p99 latency, error rate, and the service's
own figures (readout batches, cache hit rate) and the CPU seconds the service
process spent per query (``/proc``). ``--parts profile`` samples the service
with ``py-spy`` during one extra run and reports where its time goes;
``--parts ab`` runs the tree as it is and variants (other settings, e.g.
``batching=false``, or the code of another git revision) side by side,
alternating round by round, for ratios that a busy shared machine does not
skew. ``--merge`` adds rows to an earlier ``--out``.

Writes ``bench/results/load.json`` (one row per run, stable keys
``store_kind, concurrency, queries_per_request, batching, cache,
throughput_qps, p50_ms, p95_ms, p99_ms, error_rate``; ``store_kind`` is
``vector`` here, and rows merged from before it existed get it) and
``load.png``; ``--write-md`` replaces the "Serving speed" section of
BENCHMARKS.md. The service, the client and the matrix/profile/side-by-side
runners take the requests as a function (``BodiesFn``), so
``bench.serving.load_text`` drives a text store with the same machinery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bench.harness.common import (
    CACHE,
    RESULTS,
    ROOT,
    current,
    digits_store,
    loadavg,
    machine,
    write_json,
    write_section,
)

REDIS_URL = os.environ.get("FA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CONCURRENCY = (1, 8, 32, 128)
QPR = (1, 8)


# -- the service under test --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def service(store: Path, redis_url: str = REDIS_URL, log: Path | None = None, cwd: Path = ROOT,
            env_extra: dict | None = None, **settings):
    """``python -m service`` in its own process on a free loopback port with
    ``FA_<NAME>`` = each setting; yields ``(base_url, pid, prefix)``. The
    Redis keys under its prefix are deleted on exit."""
    import httpx

    port = free_port()
    prefix = f"bench:{uuid.uuid4().hex[:10]}:"
    data = tempfile.mkdtemp(prefix="fa-bench-")
    env = {**os.environ, "FA_REDIS_PREFIX": prefix, "FA_BUILD_DEFAULT_STORE": "false",
           **{f"FA_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.items()}}
    env.pop("REDIS_URL", None)
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--store", str(store),
           "--data-dir", data, "--redis-url", redis_url, "--log-level", "warning"]
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)  # (a fresh checkout has no bench/.cache yet)
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"service exited with {proc.returncode} (see {log})")
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("service did not become ready in 120 s")
            time.sleep(0.1)
        yield base, proc.pid, prefix
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()
        _drop_prefix(redis_url, prefix)
        import shutil

        shutil.rmtree(data, ignore_errors=True)


def _drop_prefix(redis_url: str, prefix: str) -> None:
    import redis

    try:
        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i:i + 1000])
        r.close()
    except redis.RedisError:
        pass


# -- requests ---------------------------------------------------------------------------------------------------
def test_inputs() -> np.ndarray:
    from influence.data import load_digits_test

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


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(base: str) -> dict:
    import httpx

    return httpx.get(base + "/v1/stats", timeout=10).json()


def _delta(before: dict, after: dict) -> dict:
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


# -- the matrix ---------------------------------------------------------------------------------------------------
def run_matrix(store: Path, configs: list[dict], concurrency, qprs, duration_s: float, max_requests: int,
               log, redis_url: str = REDIS_URL, extra: dict | None = None, granularity: str = "sources",
               threads: int = 1, make_bodies: BodiesFn | None = None, store_kind: str = "vector",
               warmup_s: float = 0.5, service_log: Path | None = None) -> list[dict]:
    """One service process per config (batching, cache), every (queries per
    request, concurrency) point in it; ``make_bodies`` gives the requests
    (default: the digits test inputs), ``store_kind`` tags every row."""
    make_bodies = make_bodies or digits_bodies()
    rows = []
    for cfg in configs:
        settings = {"batching": cfg["batching"], "cache_ttl_s": 3600 if cfg["cache"] else 0,
                    "torch_threads": threads, **(extra or {})}
        with service(store, redis_url, service_log or CACHE / "load-service.log", **settings) as (base, pid, _):
            for qpr in qprs:
                reqs = http_requests(base, make_bodies(qpr, granularity))
                for c in concurrency:
                    asyncio.run(closed_loop(base, reqs, c, warmup_s, max_requests, warmup_s=0.0))  # warm-up
                    before = stats(base)
                    la = loadavg()
                    cpu0, ccpu0 = cpu_seconds(pid), cpu_seconds()
                    res = asyncio.run(closed_loop(base, reqs, c, duration_s, max_requests, warmup_s=0.0))
                    cpu1, ccpu1 = cpu_seconds(pid), cpu_seconds()
                    after = stats(base)
                    row = {"store_kind": store_kind, "concurrency": c, "queries_per_request": qpr,
                           "batching": cfg["batching"], "cache": cfg["cache"], "granularity": granularity,
                           "torch_threads": threads,
                           "readout_block": int((extra or {}).get("readout_block", 16)),
                           **summarize(res, qpr), **_delta(before, after), "loadavg": la}
                    q = max(row["ok"] * qpr, 1)
                    row["service_cpu_ms_per_query"] = (cpu1 - cpu0) * 1000 / q
                    row["client_cpu_ms_per_query"] = (ccpu1 - ccpu0) * 1000 / q
                    bad = [s for s in res["samples"] if len(s["attributions"]) != qpr]
                    row["malformed"] = len(bad)
                    rows.append(row)
                    log(f"{store_kind} batching={cfg['batching']:d} cache={cfg['cache']:d} gran={granularity} "
                        f"qpr={qpr} c={c:3d}: "
                        f"{row['throughput_qps']:7.0f} q/s p50 {row['p50_ms'] or 0:6.1f} p99 {row['p99_ms'] or 0:7.1f}"
                        f" ms err {row['error_rate'] or 0:.3f} batch {row['queries_per_batch'] or 0:.1f} "
                        f"hit {row['cache_hit_rate'] or 0:.2f} load {la}")
    return rows


def run_profile(store: Path, seconds: float, log, redis_url: str = REDIS_URL, threads: int = 1, qpr: int = 1,
                concurrency: int = 32, granularity: str = "sources", cache: bool = False,
                make_bodies: BodiesFn | None = None, store_kind: str = "vector", raw: Path | None = None,
                service_log: Path | None = None, extra: dict | None = None, cwd: Path = ROOT) -> dict:
    """py-spy on the service during ``seconds`` of load (batching on); the
    raw stacks go to ``raw`` (default ``bench/.cache/load-profile-GRAN.txt``);
    ``cwd``: the tree whose service runs (``source_tree``: another revision)."""
    make_bodies = make_bodies or digits_bodies()
    raw = raw or CACHE / f"load-profile-{granularity}.txt"
    with service(store, redis_url, service_log or CACHE / "load-service.log", cwd=cwd, batching=True,
                 cache_ttl_s=3600 if cache else 0, torch_threads=threads, **(extra or {})) as (base, pid, _):
        reqs = http_requests(base, make_bodies(qpr, granularity))
        asyncio.run(closed_loop(base, reqs, concurrency, 1.0, 10**6, warmup_s=0.0))  # warm
        spy = profile_service(pid, seconds, raw)
        if spy is None:
            return {"error": "py-spy not installed"}
        res = asyncio.run(closed_loop(base, reqs, concurrency, seconds + 1.0, 10**7, warmup_s=0.0))
        _, err = spy.communicate(timeout=60)
    if not raw.exists():
        return {"error": (err or b"").decode()[-500:]}
    where = raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw
    out = {"store_kind": store_kind, "concurrency": concurrency, "queries_per_request": qpr,
           "granularity": granularity, "cache": cache, "raw": str(where), **analyse_profile(raw),
           **{k: v for k, v in summarize(res, qpr).items() if k != "failures"}}
    log("profile: " + ", ".join(f"{k} {v:.0%}" for k, v in out["buckets"].items()))
    return out


# -- side by side: variants of settings or of the code, alternating round by round ----------------------------
def source_tree(rev: str) -> Path:
    """The service's packages as of git revision ``rev``, in a temporary
    directory (``python -m service`` run there imports them, not the tree's)."""
    tmp = Path(tempfile.mkdtemp(prefix="fa-rev-"))
    archive = subprocess.run(["git", "archive", rev, "influence", "service", "worker"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return tmp


def parse_variant(v: str) -> tuple[dict, str | None]:
    """``KEY=VALUE+KEY=VALUE+rev:REV`` -> (FA_ settings, git revision or None)."""
    settings, rev = {}, None
    for item in v.split("+"):
        if item.startswith("rev:"):
            rev = item[4:]
        elif "=" in item:
            k, val = item.split("=", 1)
            settings[k] = val
        else:
            raise SystemExit(f"--ab-variants: {item!r} is neither NAME=VALUE (a service setting) nor rev:REV")
    return settings, rev


def run_ab(store: Path, rounds: int, duration_s: float, log, redis_url: str = REDIS_URL, threads: int = 1,
           qprs=(1,), concurrency=(32,), variants: str = "batching=false", make_bodies: BodiesFn | None = None,
           store_kind: str = "vector", granularity: str | None = None, warmup_s: float = 0.5,
           service_log: Path | None = None) -> list[dict]:
    """The same load points (``sources``, cache off unless a variant sets
    ``cache_ttl_s``) on the tree as it is (defaults: batching on) and on each variant, alternating round by round,
    so that a busy shared machine slows all of them alike. A variant is
    ``+``-joined ``NAME=VALUE`` settings and/or ``rev:REV`` (the code of that
    git revision, with this environment's packages)."""
    import shutil

    runs, trees = [("as is", ROOT, {})], []
    try:
        for v in [v for v in variants.split(",") if v]:
            settings, rev = parse_variant(v)
            tree = source_tree(rev) if rev else ROOT
            if rev:
                trees.append(tree)
            runs.append((v, tree, settings))
        make_bodies = make_bodies or digits_bodies()
        rows = []
        for rnd in range(rounds):
            for name, tree, settings in runs:
                with service(store, redis_url, service_log or CACHE / "load-service.log", cwd=tree,
                             **{"cache_ttl_s": 0, "torch_threads": threads, **settings}) as (base, pid, _):
                    for qpr in qprs:
                        reqs = http_requests(base, make_bodies(qpr, granularity))
                        for c in concurrency:
                            asyncio.run(closed_loop(base, reqs, c, warmup_s, 10**6, warmup_s=0.0))
                            cpu0 = cpu_seconds(pid)
                            res = asyncio.run(closed_loop(base, reqs, c, duration_s, 10**6, warmup_s=0.0))
                            cpu1 = cpu_seconds(pid)
                            row = {"store_kind": store_kind, "experiment": variants, "variant": name,
                                   "round": rnd, "concurrency": c, "queries_per_request": qpr,
                                   "granularity": granularity or "sources", **summarize(res, qpr),
                                   "loadavg": loadavg()}
                            row["service_cpu_ms_per_query"] = (cpu1 - cpu0) * 1000 / max(row["ok"] * qpr, 1)
                            rows.append(row)
                            log(f"ab {store_kind} {name} c={c} qpr={qpr} round {rnd}: "
                                f"{row['throughput_qps']:.0f} q/s p99 "
                                f"{row['p99_ms']:.1f} ms, {row['service_cpu_ms_per_query']:.3f} CPU ms/query")
    finally:
        for t in trees:
            shutil.rmtree(t, ignore_errors=True)
    return rows


# -- report -------------------------------------------------------------------------------------------------------
def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    styles = {(True, False): ("C0", "-"), (False, False): ("C1", "-"), (True, True): ("C0", ":"),
              (False, True): ("C1", ":")}
    for b, col in ((True, "C0"), (False, "C1")):
        for qpr, mk in ((1, "o"), (8, "s")):
            rs = sorted((r for r in rows if r["batching"] == b and not r["cache"] and r["queries_per_request"] == qpr
                         and r["granularity"] == "both" and r.get("readout_block", 16) == 16),
                        key=lambda r: r["concurrency"])
            if rs:
                axes[2].plot([r["concurrency"] for r in rs], [r["throughput_qps"] for r in rs], "-", marker=mk,
                             color=col, label=f"batch {'on' if b else 'off'}, {qpr} q/req")
    axes[2].set_ylabel("queries / s")
    axes[2].set_title("granularity both (examples + sources), cache off")
    if axes[2].lines:
        axes[2].legend(fontsize=7)
    for (b, c), (col, ls) in styles.items():
        for qpr, mk in ((1, "o"), (8, "s")):
            rs = sorted((r for r in rows if r["batching"] == b and r["cache"] == c and r["queries_per_request"] == qpr
                         and r["granularity"] == "sources"), key=lambda r: r["concurrency"])
            if not rs:
                continue
            lab = f"batch {'on' if b else 'off'}, cache {'on' if c else 'off'}, {qpr} q/req"
            x = [r["concurrency"] for r in rs]
            axes[0].plot(x, [r["throughput_qps"] for r in rs], ls, marker=mk, color=col, label=lab)
            axes[1].plot(x, [r["p99_ms"] for r in rs], ls, marker=mk, color=col, label=lab)
    axes[0].axhline(1000, color="k", lw=0.8, ls="--")
    axes[1].axhline(50, color="k", lw=0.8, ls="--")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (connections)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("queries / s")
    axes[0].set_title("granularity sources (default request)")
    axes[1].set_title("granularity sources: p99 latency")
    axes[1].set_ylabel("p99 latency (ms)")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(r: dict | None) -> str:
    if r is None:
        return "–"
    return (f"{r['throughput_qps']:,.0f} q/s · p50 {r['p50_ms']:.1f} · p99 {r['p99_ms']:.1f} ms"
            + (f" · err {r['error_rate']:.1%}" if r["error_rate"] else ""))


def markdown(res: dict) -> str:
    m = res["machine"]
    rows = res["rows"]
    runs = res.get("runs") or [{k: res.get(k) for k in ("command", "machine", "load_start", "load_end", "settings",
                                                         "duration_s")}]
    lines = [f"Machine: {m['cpus']}-core x86 ({m['cpu']}), {m['mem_gib']} GiB, no GPU, shared with other jobs (load "
             "averages below, for 2 cores; the load generator runs on the same 2 cores). Service: `python -m "
             f"service` on loopback, the digits store (`{res['store']}`, built with `method.steps=20`: the readout "
             f"cost does not depend on K), Redis at `{res['redis_url']}` under a fresh key prefix, "
             "`FA_TORCH_THREADS=1`, other settings at their defaults (max_batch 64, max_wait_ms 2, readout_block 16, "
             "queue_size 1024) unless a run sets them. Requests: the default request (granularity `sources`, top_k "
             "10, recorded) or `both`, 1 or 8 digits test inputs each. Each point: a 0.5 s warm-up, then the "
             "stated seconds (at most 20,000 requests), closed loop: each connection sends its next request "
             "when the last is answered. JSON: `bench/results/load.json`; plot: `bench/results/load.png`. "
             "Runs (merged into one JSON):", ""]
    for r in runs:
        lines.append(f"- `{current(r['command'])}` — {r['machine']['date']}, git `{r['machine']['git']}`, load average "
                     f"{r['load_start']:.1f} → {r['load_end']:.1f}, {r['duration_s']:g} s per point")
    lines.append("")
    groups = sorted({(r["granularity"], r.get("readout_block", 16)) for r in rows},
                    key=lambda g: (g[0] != "sources", g))
    for gran, blk in groups:
        mine = [r for r in rows if r["granularity"] == gran and r.get("readout_block", 16) == blk]
        for qpr in sorted({r["queries_per_request"] for r in mine}):
            cs = sorted({r["concurrency"] for r in mine})
            lines += [f"Granularity `{gran}`, readout_block {blk}, {qpr} quer{'y' if qpr == 1 else 'ies'} per "
                      "request:", "",
                      "| batching, cache | " + " | ".join(f"c = {c}" for c in cs) + " |",
                      "| --- | " + " | ".join("---" for _ in cs) + " |"]
            for b in (True, False):
                for c_on in (False, True):
                    sel = [r for r in mine if r["queries_per_request"] == qpr
                           and r["batching"] == b and r["cache"] == c_on]
                    if not sel:
                        continue
                    cells = [_cell(next((r for r in sel if r["concurrency"] == c), None)) for c in cs]
                    lines.append(f"| {'on' if b else 'off'}, {'on' if c_on else 'off'} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += findings(res)
    lines += ab_markdown(res.get("ab") or [])
    return "\n".join(lines)


AB_NOTES = {
    "batching=false": "`batching=false`: every request is its own readout (padded to one block), as the batching "
                      "goal's baseline",
    "adaptive_wait=false": "`adaptive_wait=false`: every batch waits the full `max_wait_ms` (2 ms) window for "
                           "company, the batcher before adaptive wait",
    "cache_ttl_s=": "`cache_ttl_s=3600`: the result cache on, as by default (the baseline here has it off); the "
                    "requests cycle through 360 inputs, so after the warm-up nearly every query hits",
    "rev:": "`rev:REV`: the service's code at that git revision, run with this environment's packages (so it, too, "
            "gets uvloop, httptools and hiredis, which uvicorn and redis-py pick up when installed)",
}


def ab_table(rows: list[dict]) -> list[str]:
    """One experiment's rows -> a markdown table of medians, each with its
    ratio to the first variant (the tree as is)."""
    import statistics

    names = list(dict.fromkeys(r["variant"] for r in rows))
    points = sorted({(r["concurrency"], r["queries_per_request"]) for r in rows})
    lines = ["| variant | " + " | ".join(f"c = {c}, {q} q/req" for c, q in points) + " |",
             "| --- | " + " | ".join("---" for _ in points) + " |"]
    for n in names:
        cells = []
        for c, q in points:
            def sel(v, c=c, q=q):
                return [r for r in rows
                        if r["variant"] == v and r["concurrency"] == c and r["queries_per_request"] == q]

            qps = statistics.median(r["throughput_qps"] for r in sel(n))
            qps0 = statistics.median(r["throughput_qps"] for r in sel(names[0]))
            p99 = statistics.median(r["p99_ms"] for r in sel(n))
            cpu = statistics.median(r["service_cpu_ms_per_query"] for r in sel(n))
            cells.append(f"{qps:,.0f} q/s ({qps / qps0:.2f}x) · p99 {p99:.0f} ms · {cpu:.2f} CPU ms/q")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def ab_markdown(ab: list[dict]) -> list[str]:
    if not ab:
        return []
    lines = ["", "**Side by side** (`--parts ab`: the tree as is and each variant alternate round by round on "
             "one machine, medians over rounds, ratios to *as is*; `sources`, cache off, batching on unless the "
             "variant turns it off):", ""]
    for exp in dict.fromkeys(r.get("experiment", "") for r in ab):
        rows = [r for r in ab if r.get("experiment", "") == exp]
        lines += [f"Variants `{exp}`, {max(r['round'] for r in rows) + 1} rounds:", "", *ab_table(rows), ""]
    lines += [f"- {n}." for k, n in AB_NOTES.items() if any(k in r["variant"] for r in ab)]
    return lines


def ab_ratio(ab: list[dict], variant: str, c: int, q: int) -> tuple[float, list[float]] | None:
    """Median throughput of *as is* over ``variant`` at one point, and the
    per-round ratios."""
    import statistics

    per = {}
    for r in ab:
        if r["concurrency"] == c and r["queries_per_request"] == q and r["variant"] in ("as is", variant):
            per.setdefault((r.get("experiment"), r["round"]), {})[r["variant"]] = r["throughput_qps"]
    pairs = [d for d in per.values() if len(d) == 2 and d[variant]]
    if not pairs:
        return None
    ratios = [d["as is"] / d[variant] for d in pairs]
    return statistics.median(d["as is"] for d in pairs) / statistics.median(d[variant] for d in pairs), ratios


def _pick(rows, **kw) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)


def findings(res: dict) -> list[str]:
    """Goals, ratios and the profile, computed from this run's rows."""
    rows, out = res["rows"], ["**Findings.**", ""]
    src = [r for r in rows if r["granularity"] == "sources" and r.get("readout_block", 16) == 16]
    goal = _pick(src, concurrency=32, queries_per_request=1, batching=True, cache=False)
    goal8 = _pick(src, concurrency=32, queries_per_request=8, batching=True, cache=False)
    runs = res.get("runs") or [res]
    la = runs[0]["load_start"]
    if goal:
        ok = goal["throughput_qps"] >= 1000 and goal["p99_ms"] < 50
        out.append(f"- Goal (≥ 1,000 queries/s at concurrency 32 with p99 < 50 ms), default request, batching on, "
                   f"cache off: {goal['throughput_qps']:,.0f} q/s, p99 {goal['p99_ms']:.0f} ms with one query per "
                   f"request — {'met' if ok else 'not met'} on this machine at load average {goal['loadavg']:.1f}"
                   + (f"; with 8 queries per request {goal8['throughput_qps']:,.0f} q/s at p99 "
                      f"{goal8['p99_ms']:.0f} ms" if goal8 else "") + ". The service spent "
                   f"{goal['service_cpu_ms_per_query']:.2f} ms of CPU per query"
                   + (f" ({goal8['service_cpu_ms_per_query']:.2f} ms with 8 per request)" if goal8 else "")
                   + f", the load generator {goal['client_cpu_ms_per_query']:.2f} ms; at that cost one core that "
                   f"is the service's alone serves about {1000 / goal['service_cpu_ms_per_query']:,.0f} "
                   "single-query requests/s (the event loop holds the GIL, so one core is the bound for this "
                   f"work; load average {la:.1f} here, for 2 cores). The machine matters: this benchmark's first "
                   "run (an Intel Xeon, 184 GFLOP/s float32 GEMM) served 1,139 q/s at p99 42 ms with the code "
                   "of then, which this run's machine serves at the rate of the `rev:799e528` line below.")
        base = [r for r in res.get("ab", []) if r["variant"] == "as is" and r["concurrency"] == 32
                and r["queries_per_request"] == 1]
        if base:
            out.append("- The side-by-side runs below repeat that point: "
                       + ", ".join(f"{r['throughput_qps']:,.0f} q/s at p99 {r['p99_ms']:.0f} ms" for r in base)
                       + " (load average " + ", ".join(f"{r['loadavg']:.1f}" for r in base) + ").")
    ab = res.get("ab", [])
    for c in sorted({r["concurrency"] for r in ab}):
        for q in sorted({r["queries_per_request"] for r in ab}):
            got = ab_ratio(ab, "batching=false", c, q)
            if got:
                out.append(f"- Batching on vs off, side by side (`sources`, cache off, c = {c}, {q} q/req): "
                           f"{got[0]:.2f}x (per round: " + ", ".join(f"{x:.2f}" for x in got[1])
                           + (") — one client: nothing to merge." if c == 1 else
                              f") — the 3x goal {'met' if got[0] >= 3 else 'not met'} at this point."))
    for gran in sorted({r["granularity"] for r in rows}):
        sel = [r for r in rows if r["granularity"] == gran and r.get("readout_block", 16) == 16 and not r["cache"]]
        ratios = []
        for r in sel:
            if r["batching"]:
                off = _pick(sel, concurrency=r["concurrency"], queries_per_request=r["queries_per_request"],
                            batching=False)
                if off and off["throughput_qps"]:
                    ratios.append((r["concurrency"], r["queries_per_request"], r["throughput_qps"]
                                   / off["throughput_qps"]))
        if ratios:
            best = max(ratios, key=lambda t: t[2])
            at32 = [f"{x[2]:.1f}x ({x[1]} q/req)" for x in ratios if x[0] == 32]
            out.append(f"- Batching on vs off in the matrix (one run each, in turn), granularity `{gran}`, cache "
                       "off: " + ", ".join(at32) + " at "
                       f"concurrency 32; best {best[2]:.1f}x (c = {best[0]}, {best[1]} q/req). "
                       + ("With the sources only (20 responses) a padded block costs ~0.5 ms, most of it the fixed "
                          "cost of ~70 torch calls, not arithmetic: merging requests pays only as far as that "
                          "fixed cost outweighs the per-request HTTP work."
                          if gran == "sources" else
                          "With per-example responses (1,457 per query) the readout dominates and merging "
                          "requests into padded blocks pays."))
    hit = [r for r in src if r["cache"] and r["cache_hit_rate"] is not None]
    if hit:
        h = sum(r["cache_hit_rate"] for r in hit) / len(hit)
        parts = []
        for q in sorted({r["queries_per_request"] for r in hit}):
            pairs = [(r, _pick(src, concurrency=r["concurrency"], queries_per_request=q, batching=r["batching"],
                               cache=False)) for r in hit if r["queries_per_request"] == q]
            rat = [a["throughput_qps"] / b["throughput_qps"] for a, b in pairs if b]
            parts.append(f"{min(rat):.2f}-{max(rat):.2f}x with {q} q/req")
        out.append(f"- Cache on (hit rate {h:.0%}: the requests cycle through 360 inputs) vs off, `sources`: "
                   + ", ".join(parts) + " (over concurrency and batching). A hit skips the readout, the top-k and "
                   "the credit split (the cached answer holds its credit) for one more Redis round trip: the gain "
                   "is largest where the miss path is dearest (batching off).")
    for prof in res.get("profile", []):
        if prof.get("buckets"):
            top = list(prof["buckets"].items())[:9]
            out.append(f"- Where the service's time goes (py-spy, {prof['samples']:,} samples over all threads, "
                       f"concurrency {prof['concurrency']}, {prof['queries_per_request']} q/req, "
                       f"`{prof['granularity']}`, batching on, cache {'on' if prof['cache'] else 'off'}; raw stacks in "
                       f"`bench/.cache/load-profile-{prof['granularity']}.txt`, not committed): "
                       + ", ".join(f"{k} {v:.0%}" for k, v in top) + ".")
    if res.get("ab"):
        out.append("- Settings and earlier code side by side: see *Side by side* below.")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serving.load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, help="store root (default: the digits store in bench/.cache)")
    ap.add_argument("--redis-url", default=REDIS_URL)
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    ap.add_argument("--qpr", default=",".join(map(str, QPR)), help="queries per request")
    ap.add_argument("--batching", default="on,off")
    ap.add_argument("--cache", default="off,on")
    ap.add_argument("--granularity", default="sources", help="comma separated: sources, examples, both")
    ap.add_argument("--duration", type=float, default=6.0, help="seconds measured per run")
    ap.add_argument("--max-requests", type=int, default=20000, help="requests per run at most")
    ap.add_argument("--threads", type=int, default=1, help="FA_TORCH_THREADS of the service")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="another FA_ setting")
    ap.add_argument("--parts", default="matrix",
                    help="comma separated: matrix (the load matrix), profile (py-spy on the service at c=32, "
                         "1 q/req, batching on, cache off), ab (see --ab-variants)")
    ap.add_argument("--profile-granularity", default="sources", help="comma separated granularities to profile")
    ap.add_argument("--out", default="load.json")
    ap.add_argument("--ab-rounds", type=int, default=3,
                    help="ab part: rounds of the tree as is and each variant, alternating (cache off, --qpr, "
                         "--concurrency)")
    ap.add_argument("--ab-variants", default="batching=false",
                    help="comma separated variants, each +-joined NAME=VALUE service settings and/or rev:GIT_REV")
    ap.add_argument("--merge", action="store_true",
                    help="add the rows to those already in --out (an earlier run of other settings)")
    ap.add_argument("--write-md", action="store_true", help="replace the Serving speed section of BENCHMARKS.md")
    a = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    store = a.store or digits_store()
    on = lambda s: [v.strip() == "on" for v in s.split(",")]  # noqa: E731
    configs = [{"batching": b, "cache": c} for b in on(a.batching) for c in on(a.cache)]
    extra = dict(kv.split("=", 1) for kv in a.set)
    res = {"command": "python -m bench.serving.load " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "machine": machine(), "load_start": loadavg(), "store": str(store.relative_to(ROOT)
                                                                        if store.is_relative_to(ROOT) else store),
           "redis_url": a.redis_url, "duration_s": a.duration, "max_requests": a.max_requests,
           "settings": {"torch_threads": a.threads, **extra}, "rows": []}
    parts = set(a.parts.split(","))
    if "matrix" in parts:
        for gran in a.granularity.split(","):
            res["rows"] += run_matrix(store, configs, [int(c) for c in a.concurrency.split(",")],
                                      [int(q) for q in a.qpr.split(",")], a.duration, a.max_requests, log,
                                      a.redis_url, extra, gran, a.threads)
    if "profile" in parts:
        res["profile"] = [run_profile(store, 8, log, a.redis_url, a.threads, granularity=g)
                          for g in a.profile_granularity.split(",")]
    if "ab" in parts:
        res["ab"] = run_ab(store, a.ab_rounds, a.duration, log, a.redis_url, a.threads,
                           [int(q) for q in a.qpr.split(",")], [int(c) for c in a.concurrency.split(",")],
                           a.ab_variants)
    res["load_end"] = loadavg()
    prev = RESULTS / a.out
    if a.merge and prev.exists():
        old = json.loads(prev.read_text())
        for part in ("rows", "profile", "ab"):  # rows from before store_kind existed: the digits store
            for r in old.get(part, []):
                r.setdefault("store_kind", "vector")
        res["rows"] = old.get("rows", []) + res["rows"]
        res["profile"] = old.get("profile", []) + res.get("profile", [])
        res["ab"] = old.get("ab", []) + res.get("ab", [])
        res["runs"] = old.get("runs", [{k: old.get(k) for k in ("command", "machine", "load_start", "load_end",
                                                                "settings", "duration_s")}])
        res["runs"].append({k: res.get(k) for k in ("command", "machine", "load_start", "load_end", "settings",
                                                    "duration_s")})
    path = write_json(a.out, res)
    if res["rows"]:
        plot(res["rows"], path.with_suffix(".png"))
    log(f"wrote {path}")
    if a.write_md:
        write_section("Serving speed", markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
