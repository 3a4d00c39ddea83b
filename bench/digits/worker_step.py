"""``python -m bench.digits.worker_step``: seconds per posthoc propagation step of
the worker's simulation (digits preset: all 1,437 + 20 directions, full-set
GGN fast path), for several ``method.ggn_block`` values side by side.

The values alternate round by round on the trained digits model of
``bench/.cache/digits-k20`` (built if missing), so a busy shared machine
slows all of them alike; medians. Also checks that the block size changes
only the last bits (relative difference of one step's result). Writes
``bench/results/worker_step.json``; ``--write-md`` adds the table to the
"Worker: building the default store" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bench.harness.common import digits_store, machine, write_json
from influence.mlp.propagate import Simulator
from influence.store import open_store
from worker.config import load_config


def measure(blocks: list[int], rounds: int, steps: int) -> dict:
    store = open_store(digits_store())
    cfg = load_config("digits")
    params = {k: v.float() for k, v in store.params[0].items()}
    X, y = store.X.float(), torch.as_tensor(store.y)
    source = torch.as_tensor(store.manifest.example_source)
    sim = Simulator(cfg.method, cfg.model, cfg.train.weight_decay, X, y, source, len(store.manifest.source_ids))
    G = sim.directions(params)
    times: dict[int, list[float]] = {b: [] for b in blocks}
    first: dict[int, torch.Tensor] = {}
    for _ in range(rounds):
        for b in blocks:
            sim.cfg = cfg.method.model_copy(update={"ggn_block": b})
            product, U = sim.curvature(params, None), torch.zeros_like(G)
            sim.step(U, G, product)  # warm-up (from zero: the same for every block size)
            t0 = time.perf_counter()
            for _ in range(steps):
                sim.step(U, G, product)
            times[b].append((time.perf_counter() - t0) / steps)
            first.setdefault(b, U.clone())  # after 1 + steps steps
    ref = first[blocks[0]]
    return {"blocks": blocks, "rounds": rounds, "steps_per_round": steps, "seconds_per_step": times,
            "median_s": {b: statistics.median(t) for b, t in times.items()},
            "rel_diff_vs_first": {b: float((first[b] - ref).norm() / ref.norm()) for b in blocks},
            "machine": machine()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.digits.worker_step", description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", default=f"{1 << 20},{1 << 22},{1 << 24}", help="ggn_block values, comma separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per round and value")
    ap.add_argument("--write-md", action="store_true")
    a = ap.parse_args(argv)
    res = measure([int(b) for b in a.blocks.split(",")], a.rounds, a.steps)
    path = write_json("worker_step.json", res)
    from bench.digits import worker_step_report

    worker_step_report.main(["--json", str(path)] + ([] if a.write_md else ["--print"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
