"""Timing on a shared machine. Timings there are noisy; every comparison is measured side by side in
one run (variants interleaved round by round, medians), and the figures reported are ratios between
such neighbours. ``timed`` is one function's median on any device (CUDA events on a GPU)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


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


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device = torch.device("cpu"), min_s: float = 0.2, max_reps: int = 200) -> float:
    """Median seconds per call after a warm-up, at least 3 calls and about ``min_s`` in all (CUDA events
    on a GPU)."""
    fn()
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    one = max(time.perf_counter() - t0, 1e-6)
    times = []
    for _ in range(int(min(max_reps, max(3, min_s / one)))):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]
