"""``python -m bench.serving.procs``: one serving process against several
behind one port (``FA_WORKERS``), side by side.

Each round starts the service (``bench.harness.service``: ``python -m service``
on a free loopback port, the Redis at ``--redis-url`` under a fresh prefix)
once per process count, alternating, so that a busy shared machine slows
them alike; medians over rounds. The load generator runs in ``--clients``
processes (``multiprocessing`` spawn), each a closed loop of concurrency /
clients keep-alive connections (``bench.serving.client.closed_loop``), so that it is
not the limit. Per point: throughput, p50 / p99, errors, the service's CPU
per query (the process tree: supervisor and serving processes) and the
resident memory of every serving process (the store is resident once per
process). Stores: ``vector`` (the digits store, ``bench.harness.common.digits_store``)
and ``hf`` (a tiny Hugging Face store, ``tests/service/hf_store.py``, built
into ``bench/.cache/hf-tiny``: the request path, not the readout, is what
is compared).

Writes ``bench/results/load_procs.json`` (rows with stable keys
``store_kind, processes, concurrency, queries_per_request, qps, p99_ms``) and,
with ``--write-md``, the section "Serving speed: several processes" of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

from bench.harness.common import CACHE, RESULTS, machine, write_json
from bench.harness.service import REDIS_URL, cpu_seconds, rss_mib, service, tree
from bench.serving.client import closed_loop, digits_bodies, http_requests, request_bodies, summarize

HF_STORE = CACHE / "hf-tiny"
HF_WORDS = [f"w{i}" for i in range(60)] + [f"s{s}x{i}" for s in range(3) for i in range(15)]


def hf_store(root: Path = HF_STORE) -> Path:
    if not (root / "store" / "CURRENT").exists():
        from tests.service.hf_store import build_hf_store

        root.mkdir(parents=True, exist_ok=True)
        build_hf_store(root)
    return root / "store"


def hf_bodies():
    import numpy as np

    rng = np.random.default_rng(0)
    qs = [{"text": " ".join(rng.choice(HF_WORDS, size=int(rng.integers(2, 7))))} for _ in range(360)]
    return lambda qpr, granularity: request_bodies(qs, qpr, granularity=granularity)


def _client(args) -> dict:
    base, reqs, conns, seconds = args
    return asyncio.run(closed_loop(base, reqs, conns, seconds, 10**7, warmup_s=0.0))


def serving_pids(pid: int) -> list[int]:
    """The processes that serve: a supervisor's spawned children (``service.supervisor``), else the service itself."""
    kids = []
    for p in tree(pid):
        try:
            if p != pid and b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes():
                kids.append(p)
        except OSError:
            pass
    return kids or [pid]


def wait_all(base: str, n: int, deadline_s: float = 120) -> None:
    import httpx

    end = time.time() + deadline_s
    while time.time() < end:
        seen = set()
        for _ in range(8 * n):
            try:
                r = httpx.get(base + "/readyz", timeout=5)
                if r.status_code == 200:
                    seen.add(r.json().get("process"))
            except httpx.HTTPError:
                pass
        if len(seen) >= n:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{n} serving processes not ready")


def run(kinds: list[str], workers: list[int], concurrency: list[int], qprs: list[int], rounds: int, seconds: float,
        clients: int, redis_url: str, log) -> list[dict]:
    from bench.harness.common import digits_store

    stores = {"vector": (digits_store, digits_bodies), "hf": (hf_store, hf_bodies)}
    rows = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(clients) as pool:
        for kind in kinds:
            store, make = stores[kind][0](), stores[kind][1]()
            for rnd in range(rounds):
                for n in workers:
                    threads = max(1, (os.cpu_count() or 1) // n)
                    with service(store, redis_url, CACHE / "load-procs-service.log", workers=n,
                                 torch_threads=threads, cache_ttl_s=0) as (base, pid, _):
                        wait_all(base, n)
                        procs = serving_pids(pid)
                        mem = [round(rss_mib(p), 1) for p in procs]
                        for qpr in qprs:
                            reqs = http_requests(base, make(qpr, "sources"))
                            for c in concurrency:
                                per = [c // clients + (i < c % clients) for i in range(clients)]
                                pool.map(_client, [(base, reqs, k, 0.5) for k in per if k])  # warm-up
                                ids = tree(pid)
                                cpu0 = cpu_seconds(*ids)
                                parts = pool.map(_client, [(base, reqs, k, seconds) for k in per if k])
                                cpu1 = cpu_seconds(*ids)
                                res = {"records": [r for p in parts for r in p["records"]],
                                       "failures": {k: v for p in parts for k, v in p["failures"].items()},
                                       "elapsed_s": max(p["elapsed_s"] for p in parts)}
                                s = summarize(res, qpr)
                                row = {"store_kind": kind, "processes": n, "concurrency": c,
                                       "queries_per_request": qpr, "qps": round(s["throughput_qps"], 1),
                                       "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "errors": s["errors"],
                                       "round": rnd, "torch_threads": threads, "load_clients": clients,
                                       "service_cpu_ms_per_query": (cpu1 - cpu0) * 1000 / max(s["ok"] * qpr, 1),
                                       "rss_mib_per_process": mem, "loadavg": round(os.getloadavg()[0], 2)}
                                rows.append(row)
                                log(f"{kind} processes={n} c={c} qpr={qpr} round {rnd}: {row['qps']:.0f} q/s "
                                    f"p99 {row['p99_ms'] or 0:.1f} ms err {row['errors']} "
                                    f"cpu {row['service_cpu_ms_per_query']:.2f} ms/q rss {mem} load {row['loadavg']}")
    return rows


def medians(rows: list[dict]) -> list[dict]:
    keys = sorted({(r["store_kind"], r["concurrency"], r["queries_per_request"], r["processes"]) for r in rows})
    out = []
    for k in keys:
        rs = [r for r in rows if (r["store_kind"], r["concurrency"], r["queries_per_request"], r["processes"]) == k]
        out.append({"store_kind": k[0], "concurrency": k[1], "queries_per_request": k[2], "processes": k[3],
                    "qps": statistics.median(r["qps"] for r in rs),
                    "p99_ms": statistics.median(r["p99_ms"] or 0 for r in rs),
                    "cpu_ms_per_query": statistics.median(r["service_cpu_ms_per_query"] for r in rs),
                    "rss_mib_per_process": rs[0]["rss_mib_per_process"], "rounds": len(rs),
                    "per_round_qps": [r["qps"] for r in rs], "errors": sum(r["errors"] for r in rs)})
    return out


def cuts(rev: str, rounds: int, seconds: float, redis_url: str, log) -> dict:
    """Where a request's time goes, before and after the cuts: py-spy on the
    service of git revision ``rev`` and of the tree as is (digits store, c =
    32, 1 query per request, sources, cache off), then both side by side
    (``bench.serving.load.run_ab``)."""
    import shutil

    from bench.harness.common import digits_store
    from bench.serving.load import run_ab, run_profile, source_tree

    store, out = digits_store(), {"rev": rev}
    tree = source_tree(rev)
    try:
        for name, cwd in (("before", tree), ("after", None)):
            kw = {"cwd": cwd} if cwd else {}
            prof = run_profile(store, seconds, log, redis_url, raw=CACHE / f"load-procs-profile-{name}.txt", **kw)
            out[f"profile_{name}"] = {k: prof.get(k) for k in ("samples", "buckets", "files", "top_self",
                                                             "throughput_qps", "p99_ms")}
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    out["side_by_side"] = run_ab(store, rounds, 4.0, log, redis_url, concurrency=(32,), qprs=(1,),
                                 variants=f"rev:{rev}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serving.procs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="vector,hf")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--concurrency", default="32,128")
    ap.add_argument("--qpr", default="1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=2, help="load generator processes")
    ap.add_argument("--redis-url", default=REDIS_URL)
    ap.add_argument("--out", type=Path, default=Path("load_procs.json"))
    ap.add_argument("--write-md", action="store_true")
    ap.add_argument("--parts", default="procs", help="procs (the comparison), cuts (profile and side by side "
                    "against --cuts-rev)")
    ap.add_argument("--cuts-rev", default="2340659", help="the revision before the request-path cuts")
    a = ap.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    log = lambda s: print(s, flush=True)  # noqa: E731
    import sys

    path = RESULTS / a.out.name
    payload = json.loads(path.read_text()) if path.exists() else {}
    parts = a.parts.split(",")
    if "procs" in parts:
        la0 = round(os.getloadavg()[0], 2)
        rows = run(a.kinds.split(","), ints(a.workers), ints(a.concurrency), ints(a.qpr), a.rounds, a.duration,
                   a.clients, a.redis_url, log)
        payload.update({"command": "python -m bench.serving.procs " + " ".join(sys.argv[1:] if argv is None else argv),
                        "machine": machine(), "loadavg_before": la0, "loadavg_after": round(os.getloadavg()[0], 2),
                        "seconds": a.duration, "clients": a.clients, "served": medians(rows), "rows": rows})
        payload["medians"] = payload["served"]
    if "cuts" in parts:
        payload["cuts"] = {**cuts(a.cuts_rev, a.rounds, 8.0, a.redis_url, log), "machine": machine()}
    out = write_json(a.out.name, payload)
    if a.write_md and "served" in payload:
        from bench.serving import reports

        reports.main(["procs", "--json", str(out)])
    print(json.dumps(payload.get("served"), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
