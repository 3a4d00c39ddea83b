"""``python -m bench.digits.precompute``: what the training-time simulation costs,
side by side with TRAK's precompute, and what it buys (LDS), on digits.

Parts (``--parts``, default all; results merge into
``results/precompute.json``, the report is ``bench.digits.precompute_report``):

* ``quality``: 10 members of the digits preset; per member the store's
  simulation as the worker runs it (``Simulator.posthoc`` over the
  preset's ``method.iterates`` iterates: directions, spectral basis,
  filter, each; training excluded, as for TRAK) and TRAK's
  featurisation + finalisation of the same checkpoint, timed in the same
  run; LDS of both at 1, 5 and 10 models on the default protocol; the
  spectral responses against the step-by-step reference on 64 directions;
  the step-by-step solver's cost measured over a few steps and
  extrapolated to K.
* ``ensemble``: ``worker.pipeline.build`` with ``method.ensemble=10``, end to
  end (training included), and the LDS of the published store.
* ``scaling``: synthetic data, 1k–8k examples, an MLP of 15k parameters:
  spectral precompute against n (and the step solver's extrapolated cost
  at the small sizes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from tqdm.auto import tqdm

from bench.digits.groundtruth import load_or_compute
from bench.digits.ours import readout
from bench.digits.protocol import Protocol, load_data
from bench.digits.trak import Trak
from bench.harness.common import CACHE, RESULTS, machine
from bench.harness.metrics import lds
from influence.mlp.model import MLPSpec
from influence.mlp.propagate import Simulator
from influence.mlp.readout import split_layers
from influence.simulate.settings import MethodConfig
from worker.config import TrainConfig, load_config
from worker.pipeline import member_seed
from worker.train import train

OUT = RESULTS / "precompute.json"
TRAK_LAMBDA = 100.0  # the tuned regulariser of bench.digits.quality (BENCHMARKS.md, Quality)
MEMBERS = 10


def _members(cfg, data, count: int) -> list[list[dict]]:
    """Trained checkpoints of the digits preset (cached), member seeds as the
    worker's: per member the iterates its simulation averages
    (``method.iterates``), the final model last."""
    out = []
    keep = cfg.method.iterate_epochs(cfg.train.epochs)[:-1]
    for e in range(count):
        seed = member_seed(cfg, e)
        path = CACHE / f"precompute-member-{seed}-{'-'.join(map(str, keep)) or 'final'}.pt"
        if not path.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            torch.save(train(cfg.model, data.X, data.y, cfg.train, seed, keep_epochs=keep).averaged(), path)
        out.append(torch.load(path))
    return out


def _simulate(cfg, data, params, seed: int, method: MethodConfig | None = None):
    """The worker's posthoc simulation of ``params`` (one model, or its list of iterates), timed."""
    sim = Simulator(method or cfg.method, cfg.model, cfg.train.weight_decay, data.X, data.y, data.source,
                    data.n_sources)
    t0 = time.perf_counter()
    r = sim.posthoc(params, seed)
    return r, time.perf_counter() - t0


def _steps_cost(sim: Simulator, params, steps: int = 3) -> float:
    """Seconds of the step-by-step solver for all of ``sim``'s directions,
    extrapolated to K from ``steps`` timed steps."""
    t0 = time.perf_counter()
    G = sim.directions(params)
    product = sim.curvature(params, None)
    setup = time.perf_counter() - t0
    U = torch.zeros_like(G)
    t0 = time.perf_counter()
    for _ in range(steps):
        sim.step(U, G, product)
    return setup + (time.perf_counter() - t0) / steps * sim.cfg.steps


def _steps_sim(cfg, data) -> Simulator:
    m = cfg.method.model_copy(update={"solver": "steps"})
    return Simulator(m, cfg.model, cfg.train.weight_decay, data.X, data.y, data.source, data.n_sources)


def _check(cfg, data, params, U_spectral: torch.Tensor, count: int = 64) -> dict:
    """Spectral responses vs the step-by-step reference on ``count`` example directions."""
    sim = _steps_sim(cfg, data)
    idx = torch.arange(0, len(data.X), len(data.X) // count)[:count]
    G = sim.directions(params)[idx]
    U, product = torch.zeros_like(G), sim.curvature(params, None)
    for _ in tqdm(range(sim.cfg.steps), desc="reference steps", leave=False):
        sim.step(U, G, product)
    rel = (U_spectral[idx] - U).norm(dim=1) / U.norm(dim=1)
    return {"directions": count, "rel_err_max": rel.max().item(), "rel_err_mean": rel.mean().item(),
            "rel_err_total": ((U_spectral[idx] - U).norm() / U.norm()).item()}


def part_quality(cfg, data, gt) -> dict:
    iterates = _members(cfg, data, MEMBERS)
    params = [its[-1] for its in iterates]
    taus, times, diag = [], [], []
    for e, (p, its) in enumerate(zip(tqdm(params, desc="ours: simulate"), iterates, strict=True)):
        r, secs = _simulate(cfg, data, its, member_seed(cfg, e))
        times.append(secs)
        diag.append(r.diagnostics)
        with torch.no_grad():
            taus.append(readout([p], [split_layers(r.examples.float(), cfg.model)], cfg.model, data.Xq, data.yq))
        if e == 0:  # the closed form against the step-by-step reference, around the final model alone
            one, _ = _simulate(cfg, data, p, member_seed(cfg, e))
            check = _check(cfg, data, p, one.examples)
    trak = Trak(params, cfg.model, data, lam=TRAK_LAMBDA)
    trak_s = [trak.precompute_s(m + 1) - trak.precompute_s(m) for m in range(MEMBERS)]
    steps_s = _steps_cost(_steps_sim(cfg, data), params[0])
    recs = []
    for M in (1, 5, 10):
        ours = (sum(taus[:M]) / M).double().numpy()
        recs.append({"method": "ours", "models": M, "lds": lds(ours, gt["subsets"], gt["lds_margins"]),
                     "precompute_s": sum(times[:M]), "trak_precompute_s": sum(trak_s[:M]),
                     "solver": "spectral", "rank": cfg.method.rank, "power": cfg.method.power,
                     "iterates": cfg.method.iterates})
        t = trak.scores(TRAK_LAMBDA, M).double().numpy()
        recs.append({"method": "trak", "models": M, "lds": lds(t, gt["subsets"], gt["lds_margins"]),
                     "precompute_s": sum(trak_s[:M]), "trak_precompute_s": sum(trak_s[:M]), "lambda": TRAK_LAMBDA})
    trak.close()
    recs.append({"method": "ours-steps", "models": 1, "lds": None, "precompute_s": steps_s * cfg.method.iterates,
                 "trak_precompute_s": trak_s[0], "solver": "steps", "extrapolated_from_steps": 3})
    return {"records": recs, "check": check, "diagnostics": diag[0], "per_member_s": times, "trak_member_s": trak_s}


def part_ensemble(cfg, data, gt) -> dict:
    from influence.store import open_store
    from worker.pipeline import build

    with tempfile.TemporaryDirectory() as tmp:
        c = load_config("digits", overrides=[f'store.root="{tmp}"', f"method.ensemble={MEMBERS}"])
        t0 = time.perf_counter()
        build(c, progress=True)
        build_s = time.perf_counter() - t0
        store = open_store(tmp)
        n_layers = len(cfg.model.widths) - 1
        layers = [[(b[f"{2 * l}.weight"], b[f"{2 * l}.bias"]) for l in range(n_layers)] for b in store.examples]
        with torch.no_grad():
            tau = readout(store.params, layers, cfg.model, data.Xq, data.yq)
    return {"ensemble": MEMBERS, "build_s": build_s, "lds": lds(tau.double().numpy(), gt["subsets"],
                                                                 gt["lds_margins"])}


def synthetic(n: int, d: int = 64, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gaussian-mixture classification set ``X (n, d)``, ``y (n,)``: one mean per class, unit noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, d, generator=g) * 0.6
    y = torch.randint(0, classes, (n,), generator=g)
    return means[y] + torch.randn(n, d, generator=g), y


def part_scaling(sizes=(1000, 2000, 4000, 8000), steps_upto: int = 2000) -> dict:
    spec = MLPSpec(widths=[64, 200, 10])
    recipe = TrainConfig(epochs=10)
    method = MethodConfig()
    rows = []
    for n in tqdm(sizes, desc="scaling"):
        X, y = synthetic(n)
        source = torch.arange(n) % 20
        params = train(spec, X, y, recipe, seed=0).params
        sim = Simulator(method, spec, recipe.weight_decay, X, y, source, 20)
        t0 = time.perf_counter()
        sim.posthoc(params, seed=0)
        row = {"n": n, "params": spec.layout().numel, "precompute_s": time.perf_counter() - t0}
        if n <= steps_upto:
            steps = Simulator(method.model_copy(update={"solver": "steps"}), spec, recipe.weight_decay, X, y,
                              source, 20)
            row["steps_precompute_s"] = _steps_cost(steps, params, steps=1)
        rows.append(row)
    return {"scaling": rows}


def merge(update: dict, stamp: bool = True) -> dict:
    """Fold one part's results into ``precompute.json`` (other parts kept).
    ``stamp``: the part is one of this module's, measured now (the report's
    header states this machine, date and git); a record that carries its
    own (``bench.digits.first_answer``) leaves the header alone."""
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    old.update(update)
    if stamp or "machine" not in old:
        old["machine"] = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(old, indent=1) + "\n")
    return old


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.digits.precompute", description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="*", default=["quality", "ensemble", "scaling"],
                    choices=["quality", "ensemble", "scaling"])
    a = ap.parse_args(argv)
    cfg, data = load_config("digits"), load_data()
    gt = load_or_compute(Protocol(), data, matched_loo=False) if {"quality", "ensemble"} & set(a.parts) else None
    for part in a.parts:
        t0 = time.perf_counter()
        res = {"quality": lambda: part_quality(cfg, data, gt), "ensemble": lambda: {"ensemble": part_ensemble(
            cfg, data, gt)}, "scaling": part_scaling}[part]()
        res[f"{part}_wall_s"] = time.perf_counter() - t0
        merge(res)
        print(f"{part}: done in {res[f'{part}_wall_s']:.0f} s -> {OUT}")
    from bench.digits.precompute_report import render

    render()


if __name__ == "__main__":
    main()
