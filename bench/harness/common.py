"""Where things live (the repository, ``bench/.cache``, ``bench/results``, BENCHMARKS.md, the digits
store), what the figures were measured on (``machine``) and how result files are written."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
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


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return path


def digest(obj, **dumps) -> str:
    """A cache key: 16 hex digits of the sha256 of ``json.dumps(obj, **dumps)``."""
    return hashlib.sha256(json.dumps(obj, **dumps).encode()).hexdigest()[:16]


def save_torch(obj, path: Path) -> None:
    """``torch.save`` atomically (a reader never sees half a file)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path.with_name(path.name + ".tmp"))
    os.replace(path.with_name(path.name + ".tmp"), path)


def cached(path: Path, compute, **load):
    """``torch.load(path)`` when it is there, else ``compute()``, saved there first."""
    import torch

    if path.exists():
        return torch.load(path, **load)
    obj = compute()
    save_torch(obj, path)
    return obj
