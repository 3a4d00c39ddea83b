"""The worker's job: data -> E trained members -> responses -> published store."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from influence.data import Dataset, load_digits_train, load_training_file
from influence.model import ParamLayout
from influence.readout import mlp_forward
from influence.store import Manifest, publish

from .config import WorkerConfig
from .simulate import Responses, Simulator
from .train import steps_per_run, train
from .twotraj import two_trajectories


def load_dataset(cfg: WorkerConfig) -> Dataset:
    d = cfg.data
    if d.path is not None:
        ds = load_training_file(d.path, d.label_column)
    else:
        ds = load_digits_train(d.n_sources, d.skew, d.affinity, d.source_seed)
    if d.limit is not None and d.limit < ds.n:
        ds.X, ds.y, ds.source = ds.X[: d.limit], ds.y[: d.limit], ds.source[: d.limit]
    return ds


def member_seed(cfg: WorkerConfig, member: int) -> int:
    return cfg.train.seed + 1000 * member


def simulate_member(cfg: WorkerConfig, X, y, source, n_sources: int, seed: int, bar=None):
    """Train one member and simulate its responses. Returns (Trained, Responses)."""
    m, spec = cfg.method, cfg.model
    sim = Simulator(m, spec, cfg.train.weight_decay, X, y, source, n_sources)
    if m.mode == "single" and m.schedule == "alongside":
        total = steps_per_run(len(X), cfg.train)
        trained = train(spec, X, y, cfg.train, seed, on_step=sim.alongside(total, bar))
        return trained, sim.result()
    trained = train(spec, X, y, cfg.train, seed)
    if m.mode == "two":
        return trained, two_trajectories(m, cfg.train, spec, trained, X, y, source, n_sources, seed, bar)
    return trained, sim.posthoc(trained.params, seed, bar)


def _blocks(flat: torch.Tensor | None, layout: ParamLayout):
    return None if flat is None else layout.unflatten(flat.float().contiguous())


def build(cfg: WorkerConfig, progress: bool = True) -> Path:
    """Run the whole job and publish; returns the new version's directory."""
    ds = load_dataset(cfg)
    if ds.X.shape[1] != cfg.model.in_dim or len(ds.classes) > cfg.model.n_classes:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"widths": [ds.X.shape[1], *cfg.model.widths[1:-1], max(len(ds.classes), 2)]})})
    X, y, source = torch.from_numpy(ds.X), torch.from_numpy(ds.y), torch.from_numpy(ds.source)
    layout = ParamLayout.for_spec(cfg.model)
    params, examples, sources, stats = [], [], [], []
    m = cfg.method
    if m.mode == "single":
        unit, per = "step", m.steps
    else:
        unit, per = "dir", len(X) * (m.directions != "sources") + len(ds.source_ids) * (m.directions != "examples")
    bar = tqdm(total=per * m.ensemble, desc=f"simulate {m.mode}/{m.schedule} x{m.ensemble}",
               disable=not progress, unit=unit)
    for e in range(m.ensemble):
        t0 = time.perf_counter()
        trained, resp = simulate_member(cfg, X, y, source, len(ds.source_ids), member_seed(cfg, e), bar)
        params.append(trained.params)
        examples.append(_blocks(resp.examples, layout))
        sources.append(_blocks(resp.sources, layout))
        with torch.no_grad():
            acc = (mlp_forward(trained.params, cfg.model, X)[0].argmax(1) == y).float().mean().item()
        stats.append({"seed": member_seed(cfg, e), "final_loss": trained.final_loss, "train_accuracy": acc,
                      "seconds": round(time.perf_counter() - t0, 3)})
    bar.close()
    manifest = Manifest(
        format_version=1, model=cfg.model, recipe=cfg.train.model_dump(mode="json"),
        method=m.model_dump(mode="json"),
        data={"name": ds.name, "fingerprint": ds.fingerprint(), "n": ds.n, "dim": int(ds.X.shape[1])},
        classes=ds.classes, source_ids=ds.source_ids, example_source=ds.source.tolist(),
        members=m.ensemble, dtype=cfg.store.dtype, has_examples=examples[0] is not None,
        has_sources=sources[0] is not None, extra={"members": stats, "preset": cfg.preset},
    )
    training = (X, y) if cfg.store.include_training_data else None
    return publish(cfg.store.root, manifest, params, examples if examples[0] is not None else None,
                   sources if sources[0] is not None else None, training, keep=cfg.store.keep)


__all__ = ["build", "load_dataset", "simulate_member", "Responses"]
