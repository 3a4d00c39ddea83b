"""Shared helpers of the speed and reliability benchmarks (``bench.serving.readout``,
``bench.serving.load``): where the digits store and results live, the machine and
its load, side-by-side timing, and replacing one section of BENCHMARKS.md.

Timings on a shared machine are noisy; every comparison here is measured
side by side in one run (variants interleaved round by round, medians), and
the figures reported are ratios between such neighbours.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
BENCHMARKS = ROOT / "BENCHMARKS.md"
DIGITS_STORE = CACHE / "digits-k20"
"""The built-in digits store, built once with ``method.steps=20``: the
readout's cost depends on the store's shapes (``R``, ``p``), not on ``K``."""


def digits_store(root: Path = DIGITS_STORE, steps: int = 20) -> Path:
    """The digits store root, built first (minutes) when it is missing."""
    if not (root / "CURRENT").exists():
        print(f"building the digits store into {root} (method.steps={steps}; minutes)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "worker", "build", "--preset", "digits", "--store", str(root),
                        "--set", f"method.steps={steps}", "--quiet"], check=True, cwd=ROOT)
    return root


def machine() -> dict:
    """What the figures were measured on, and how busy it was."""
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import torch

    return {"cpus": os.cpu_count(), "mem_gib": mem, "platform": platform.platform(),
            "cpu": _cpu_name(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg": list(os.getloadavg()), "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "git": _git_rev()}


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_rev() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def side_by_side(fns: dict[str, Callable[[], object]], rounds: int = 7, min_s: float = 0.02,
                 budget_s: float | None = None) -> dict[str, float]:
    """Median seconds per call of each function, measured interleaved: every
    round runs each function once (``reps`` calls, calibrated so one sample
    lasts at least ``min_s``), so a burst of load on the machine hits all of
    them alike. ``budget_s`` caps the rounds (at least 3)."""
    reps = {}
    for k, f in fns.items():
        f()  # warm up
        t0 = time.perf_counter()
        f()
        one = max(time.perf_counter() - t0, 1e-7)
        reps[k] = max(1, int(min_s / one))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps[k]):
                f()
            samples[k].append((time.perf_counter() - t0) / reps[k])
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return path


SECTION_ORDER = ("Readout speed", "Serving speed", "Serving speed: text store", "Reliability")


def write_section(heading: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace the ``## heading`` section of ``path`` (up to the next ``## ``)
    with ``body``, or add it before the first present section that comes
    after it in ``SECTION_ORDER`` (else at the end). The file is read right
    before writing: other sections, written by other benchmarks, are kept
    as they are."""
    title = f"## {heading}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{title}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^{re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    later = SECTION_ORDER[SECTION_ORDER.index(heading) + 1:] if heading in SECTION_ORDER else ()
    marks = [m for h in later if (m := re.search(rf"^## {re.escape(h)}[ \t]*$", text, re.M))]
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    elif marks:
        at = min(m.start() for m in marks)
        text = text[:at] + block + text[at:]
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")


def fmt(x: float | None, nd: int = 3) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{nd}g}"


RENAMED = {  # module before bench was split by family -> where it lives now (issue 29)
    "common": "harness.common", "protocol": "digits.protocol", "groundtruth": "digits.groundtruth",
    "metrics": "digits.metrics", "ours": "digits.ours", "trak_baseline": "digits.trak", "quality": "digits.quality",
    "report": "digits.quality_report", "precompute": "digits.precompute",
    "precompute_report": "digits.precompute_report", "worker_step": "digits.worker_step",
    "first_answer": "digits.first_answer", "source_groundtruth": "sources.groundtruth",
    "source_quality": "sources.quality", "source_report": "sources.report", "source_sweep": "sources.sweep",
    "lm_source_quality": "sources.lm_quality", "lm_protocol": "lm.protocol", "lm_groundtruth": "lm.groundtruth",
    "lm_baselines": "lm.baselines", "lm_ours": "lm.ours", "lm_quality": "lm.quality", "lm_quality_report": "lm.report",
    "lm_store": "lm.store", "lm_timing": "lm.timing", "ft_protocol": "ft.protocol", "ft_groundtruth": "ft.groundtruth",
    "ft_baselines": "ft.baselines", "ft_lexical": "ft.lexical", "ft_ours": "ft.ours", "ft_quality": "ft.quality",
    "ft_report": "ft.report", "ft_cost": "ft.cost", "ft_curvature": "ft.curvature", "ft_store": "ft.store",
    "load": "serving.load", "load_text": "serving.load_text", "load_text_report": "serving.load_text_report",
    "load_procs": "serving.procs", "ab_report": "serving.ab_report", "reliability": "serving.reliability",
    "startup": "serving.startup", "per_token": "serving.per_token", "text_precision": "serving.precision",
    "readout": "serving.readout", "gpu_parts": "gpu.parts", "gpu_stores": "gpu.stores", "gpu_check": "gpu.check",
    "gpu_scale": "gpu.scale", "gpu_report": "gpu.report",
}
"""``bench.gpu_suite`` and ``bench.hostile`` keep their names (entry files at the root)."""
_OLD = re.compile(r"\bbench\.(" + "|".join(sorted(RENAMED, key=len, reverse=True)) + r")\b")


def current(command: str) -> str:
    """A recorded command (results JSON) with today's module names, as the reports quote it: every
    command BENCHMARKS.md quotes must run as written."""
    return _OLD.sub(lambda m: f"bench.{RENAMED[m.group(1)]}", command)
