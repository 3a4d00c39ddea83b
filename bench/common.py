"""Shared helpers of the speed and reliability benchmarks (``bench.readout``,
``bench.load``): where the digits store and results live, the machine and
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

ROOT = Path(__file__).resolve().parent.parent
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
