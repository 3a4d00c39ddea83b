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
BENCHMARKS.md (``bench.serving.load_report``, which also runs alone). The service
(``bench.harness.service``), the client (``bench.serving.client``) and the
matrix/profile/side-by-side runners take the requests as a function
(``BodiesFn``), so ``bench.serving.load_text`` drives a text store with the
same machinery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness.common import CACHE, RESULTS, ROOT, digits_store, loadavg, machine, write_json
from bench.harness.service import REDIS_URL, cpu_seconds, service
from bench.serving.client import (
    BodiesFn,
    analyse_profile,
    closed_loop,
    delta,
    digits_bodies,
    http_requests,
    profile_service,
    stats,
    summarize,
)

CONCURRENCY = (1, 8, 32, 128)
QPR = (1, 8)


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
                           **summarize(res, qpr), **delta(before, after), "loadavg": la}
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
    log(f"wrote {path}")
    from bench.serving import load_report

    return load_report.main(["--json", str(path)] + ([] if a.write_md else ["--no-md"]))


if __name__ == "__main__":
    sys.exit(main())
