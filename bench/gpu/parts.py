"""The GPU suite's parts (``bench.gpu_suite`` runs each in its own process
with a time limit): each takes a ``Ctx`` and emits records as it goes, so
a part that fails or runs out of time keeps what it measured before.

Sizes: on a GPU the real stores and loads; on a CPU (``--device cpu``) or
with ``--quick`` the same code on tiny stores and tiny loads (a dry run).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.gpu import stores as gpu_stores
from bench.harness.common import ROOT, digits_store


@dataclass
class Ctx:
    device: torch.device
    small: bool  # tiny stores and loads: a CPU dry run or --quick
    scratch: Path
    sink: Path  # one JSON line per emitted record
    deadline: float  # time.monotonic() by which the part must be done

    def emit(self, section: str, record: dict) -> None:
        with open(self.sink, "a") as f:
            f.write(json.dumps({"section": section, "record": record}, default=str) + "\n")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def dev(self) -> str:
        return str(self.device)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the CUDA tests --------------------------------------------------------------------------------------------
DRY_TESTS = ["tests/influence/test_cuda.py"]
"""A CPU dry run collects this gpu-marked test only (skipped there); a GPU runs ``pytest -m gpu``."""


def cuda_tests(ctx: Ctx) -> None:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra"]
    if ctx.device.type != "cuda":
        cmd += DRY_TESTS
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, ctx.remaining() - 2))
    tail = r.stdout.strip().splitlines()[-1:] or [""]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail[0])}
    ctx.emit("cuda_tests", {"returncode": r.returncode, "summary": tail[0], **counts,
                            "failures": [ln for ln in r.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]})
    if r.returncode != 0:
        raise RuntimeError(f"pytest -m gpu: exit {r.returncode}: {tail[0]}")


# -- bench.gpu.check -------------------------------------------------------------------------------------------
def gpu_check(ctx: Ctx) -> None:
    store = vector_store(ctx)
    out = ctx.scratch / "gpu_check.json"
    cmd = [sys.executable, "-m", "bench.gpu.check", "--device", ctx.dev, "--quick", "--store", str(store),
           "--out", str(out), "--append", str(ctx.scratch / "gpu_check.log")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, ctx.remaining() - 2))
    res = json.loads(out.read_text()) if out.exists() else {}
    ctx.emit("gpu_check", {"returncode": r.returncode, "ok": res.get("ok"), "store": str(store),
                           "checks": [{"name": c["name"], "ok": c["ok"]} for c in res.get("checks", [])],
                           "service_path": res.get("service_path"), "peak_memory_gib": res.get("peak_memory_gib"),
                           "error": res.get("error")})
    if r.returncode != 0:
        raise RuntimeError(f"bench.gpu.check: exit {r.returncode}: {res.get('error') or r.stderr[-400:]}")


def vector_store(ctx: Ctx) -> Path:
    """The digits store the builds part published (else ``bench.harness.common``'s, K = 20:
    the readout's cost depends on the shapes, not on K); the tiny preset's on a dry run."""
    if not ctx.small:
        return gpu_stores.built("digits", ctx.scratch) or digits_store()
    return gpu_stores.store_for("tiny", ctx.dev, ctx.scratch)


# -- worker builds -------------------------------------------------------------------------------------------------
def builds(ctx: Ctx) -> None:
    """Each preset built on the device, then on the CPU (a GPU run), each
    timed and emitted when done (a build the part's time limit cuts short
    leaves the earlier ones recorded); a failed build is recorded with its
    error and the next one tried."""
    presets = ("tiny", "tiny-gpt", "tiny-hf") if ctx.small else ("digits", "brown", "brown-ft")
    devices = [ctx.dev] + (["cpu"] if ctx.device.type == "cuda" else [])
    failed = []
    for dev in devices:
        for preset in presets:
            root = ctx.scratch / "builds" / f"{preset}-{dev.split(':')[0]}"
            rec = {"preset": preset, "device": dev, "kind": gpu_stores.KIND[preset], "seconds": None}
            try:
                rec["seconds"] = round(gpu_stores.build(preset, dev, root, ctx.scratch), 2)
            except Exception as e:  # noqa: BLE001 - recorded; the next build is still tried
                rec["error"] = f"{type(e).__name__}: {e}"[:600]
            ctx.emit("builds", rec)
            log(f"build {preset} on {dev}: {rec['seconds']} s {rec.get('error', '')}")
            if "error" in rec:
                failed.append(f"{preset}/{dev}")
            if ctx.remaining() < 5:
                break
    if failed:
        raise RuntimeError(f"builds that did not finish: {', '.join(failed)}")


# -- text readout on the device against the CPU ------------------------------------------------------------------
def _queries(ctx: Ctx, att, n: int) -> list:
    """``n`` encoded queries (``_raw_texts``), each shortened until the store's tokenizer takes it."""
    out = []
    for t in _raw_texts(ctx, att)[:n]:
        words = t.split()
        while words:
            try:
                out.append(att.encode(text=" ".join(words)))
                break
            except Exception:  # noqa: BLE001 - too long for the context: shorten
                words = words[:-1]
    return out


def text_readout(ctx: Ctx) -> None:
    """Scores of the same queries on the device and on the CPU (float32),
    and with bfloat16 tangents on the device (the protocol GPT only): the
    largest difference relative to the largest score, per granularity."""
    from influence.store import open_store
    from influence.text.attributor import TextAttributor

    presets = ("tiny-gpt", "tiny-hf") if ctx.small else ("brown", "brown-ft")
    n = 8 if ctx.small else 64
    for preset in presets:
        root = gpu_stores.store_for(preset, ctx.dev, ctx.scratch)
        st = open_store(root)
        cpu = TextAttributor(st, "cpu")
        qs = _queries(ctx, cpu, n)
        ref = _scores(cpu, qs)
        for tdt in (torch.float32, torch.bfloat16):
            att = TextAttributor(st, ctx.device, tangent_dtype=tdt)
            if att.tangent_dtype != tdt:  # a kind without reduced-precision tangents
                continue
            t0 = time.perf_counter()
            got = _scores(att, qs)
            secs = time.perf_counter() - t0
            rec = {"store": preset, "store_kind": gpu_stores.KIND[preset], "device": ctx.dev,
                   "tangent_dtype": str(tdt).removeprefix("torch."), "queries": len(qs), "seconds": round(secs, 3)}
            for k in ref:
                scale = float(ref[k].abs().max()) or 1.0
                rec[f"max_rel_diff_{k}"] = float((got[k] - ref[k]).abs().max()) / scale
            ctx.emit("text_readout", rec)
            log(f"text readout {preset} {rec['tangent_dtype']}: sources {rec['max_rel_diff_sources']:.2e}, "
                f"documents {rec['max_rel_diff_examples']:.2e}")


def _scores(att, qs, block: int = 16) -> dict[str, torch.Tensor]:
    parts = [att.score(qs[i:i + block]) for i in range(0, len(qs), block)]
    return {k: torch.cat([getattr(p, k).float().cpu() for p in parts]) for k in ("sources", "examples", "logprob")}


# -- the scale probe -----------------------------------------------------------------------------------------------
def scale_probe(ctx: Ctx) -> None:
    from bench.gpu import scale as gpu_scale

    gpu_scale.run(ctx.device, ctx.small, ctx.emit, log)


# -- served load ---------------------------------------------------------------------------------------------------
def processes_setting() -> str | None:
    """The service's setting for several serving processes, if this tree has one."""
    from service.settings import Settings

    return next((k for k in ("processes", "serving_processes", "workers") if k in Settings.model_fields), None)


def served(ctx: Ctx) -> None:
    from bench.harness.service import REDIS_URL
    from bench.serving import load, load_text
    from bench.serving.client import digits_bodies
    from influence.store import open_store
    from influence.text.attributor import TextAttributor

    setting = processes_setting()
    many = max(2, min(4, (os.cpu_count() or 2) // 4))
    counts = [1] + ([many] if setting and not ctx.small else [])
    ctx.emit("info", {"processes_setting": setting, "process_counts": counts,
                      "note": "the service has no processes setting in this tree: 1 process" if not setting
                      else "dry run: 1 process" if ctx.small else None})
    conc, dur = ((4,), 1.0) if ctx.small else ((32, 128), 4.0)
    threads = 1 if ctx.small else 4
    text_root = gpu_stores.store_for("tiny-gpt" if ctx.small else "brown", ctx.dev, ctx.scratch)
    texts = _raw_texts(ctx, TextAttributor(open_store(text_root), "cpu"))
    targets = [("vector", vector_store(ctx), digits_bodies(), {}),
               ("text", text_root, load_text.text_bodies(texts),
                {**load_text.SETTINGS, **({} if ctx.small else {"max_batch": 128, "text_readout_block": 64,
                                                                 "readout_workers": 2,
                                                                 "text_tangent_dtype": "bfloat16"})})]
    for kind, store, bodies, extra in targets:
        for n in counts:
            settings = {"device": ctx.dev, **extra, **({setting: n} if n > 1 else {})}
            rows = load.run_matrix(store, [{"batching": True, "cache": False}], conc, (1,), dur, 200_000, log,
                                   REDIS_URL, settings, "sources", threads, bodies, kind,
                                   service_log=ctx.scratch / "service.log")
            for r in rows:
                ctx.emit("served", {"store_kind": kind, "processes": n, "concurrency": r["concurrency"],
                                    "queries_per_request": r["queries_per_request"],
                                    "qps": r["throughput_qps"], "p99_ms": r["p99_ms"], "p50_ms": r["p50_ms"],
                                    "error_rate": r["error_rate"], "torch_threads": threads,
                                    "settings": {k: v for k, v in settings.items() if k != "request_timeout_s"}})


def _raw_texts(ctx: Ctx, att) -> list[str]:
    """Held-out Brown windows (``bench.serving.load_text.passages``), or the tiny corpus's openings on a dry run."""
    if not ctx.small:
        from bench.serving.load_text import passages

        return passages(att.tokenizer, count=360)
    return [" ".join(t.split()[:12]) for t in
            (json.loads(x)["text"] for x in gpu_stores.tiny_corpus(ctx.scratch).read_text().split("\n") if x)]


PARTS = {"cuda_tests": cuda_tests, "gpu_check": gpu_check, "builds": builds, "text_readout": text_readout,
         "scale_probe": scale_probe, "served": served}
