"""The worker's job: data -> E trained members -> responses -> published store.

Work in progress lives in ``ROOT/.work/<run id>/`` (the run id hashes the
config and the data): each trained member, the propagation state every
``store.checkpoint_every`` steps, and each finished member. A run killed
midway and started again with the same config resumes from there and
publishes the same store an uninterrupted run would; the previous store
stays current until the new one is published.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from influence import heldout, registry
from influence.datasets.vectors import Dataset, load_digits_train, load_training_file
from influence.mlp.propagate import Responses, Simulator, StepCheckpoint
from influence.mlp.readout import mlp_forward
from influence.store import Manifest

from .config import ConfigError, WorkerConfig
from .device import device_of, to_cpu
from .distributed import barrier, broadcast_params, gather_rows, init_from_env, rank_world, shard, shutdown
from .publishing import publish
from .train import Trained, steps_per_run, train
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
    return registry.of(cfg.model).member_seed(cfg.train.seed, member)


def run_id(cfg: WorkerConfig, ds: Dataset) -> str:
    """Identifies the work: every setting that changes the result, and the data."""
    key = cfg.model_dump_json(include={"data", "model", "train", "method"}) + ds.fingerprint()
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _trained(cfg, X, y, seed: int, work: Path | None) -> Trained:
    """The trained member with the iterates ``method.iterates`` averages;
    from the work dir if it holds it."""
    path = None if work is None else work / f"trained-{seed}.pt"
    if path is not None and path.exists():
        return Trained(**torch.load(path, map_location=X.device))
    t = train(cfg.model, X, y, cfg.train, seed, keep_epochs=cfg.method.iterate_epochs(cfg.train.epochs)[:-1])
    for params in t.averaged():
        broadcast_params(params)
    if path is not None and rank_world()[0] == 0:
        torch.save(t.__dict__, path)
    return t


def simulate_member(cfg: WorkerConfig, X, y, source, n_sources: int, seed: int, bar=None,
                    work: Path | None = None) -> tuple[Trained, Responses | None]:
    """Train one member and simulate its responses (rank 0 gets them all),
    on the device of ``X`` (``mode=two`` runs on the CPU: float64, the real
    optimizer per direction)."""
    m, spec = cfg.method, cfg.model
    if m.mode == "two":
        X, y, source = X.cpu(), y.cpu(), source.cpu()
    sim = Simulator(m, spec, cfg.train.weight_decay, X, y, source, n_sources)
    rank, world = rank_world()
    if world > 1 and (m.mode, m.schedule) != ("single", "posthoc"):
        raise ConfigError("distributed runs shard method.mode=single with method.schedule=posthoc only")
    if m.mode == "single" and m.schedule == "alongside":
        trained = train(spec, X, y, cfg.train, seed, on_step=sim.alongside(steps_per_run(len(X), cfg.train), bar))
        return trained, sim.result()
    trained = _trained(cfg, X, y, seed, work)
    if m.mode == "two":
        return trained, two_trajectories(m, cfg.train, spec, trained, X, y, source, n_sources, seed, bar)
    n_rows = len(X) * (m.directions != "sources") + n_sources * (m.directions != "examples")
    every = cfg.store.checkpoint_every
    iterates = trained.averaged()
    cks = [StepCheckpoint(work / f"sim-{seed}-it{c}.rank{rank}of{world}.pt", every) if work and every else None
           for c in range(len(iterates))]
    part = sim.propagate_mean(iterates, seed, shard(n_rows, rank, world), cks, bar)
    U = gather_rows(part, work, f"sim-{seed}") if world > 1 else part
    return trained, None if U is None else sim.split(U)


def _member(cfg, X, y, source, n_sources, e, work, bar) -> dict | None:
    """One member's params, responses and stats, from the work dir if done."""
    seed = member_seed(cfg, e)
    done = work / f"member-{seed}.pt"
    if done.exists():
        bar.update(bar.total // cfg.method.ensemble)
        return torch.load(done)
    t0 = time.perf_counter()
    trained, resp = simulate_member(cfg, X, y, source, n_sources, seed, bar, work)
    if resp is None:  # a non-zero rank: its shard went to rank 0
        return None
    with torch.no_grad():
        acc = (mlp_forward(trained.params, cfg.model, X)[0].argmax(1) == y).float().mean().item()
    layout = cfg.model.layout()
    out = {"params": to_cpu(trained.params),
           "examples": None if resp.examples is None else layout.unflatten(resp.examples.float().cpu().contiguous()),
           "sources": None if resp.sources is None else layout.unflatten(resp.sources.float().cpu().contiguous()),
           "stats": {"seed": seed, "final_loss": trained.final_loss, "train_accuracy": acc,
                     "seconds": round(time.perf_counter() - t0, 3), **resp.diagnostics}}
    torch.save(out, done)
    return out


def _fit_model_to_data(cfg: WorkerConfig, ds: Dataset) -> WorkerConfig:
    widths = [ds.X.shape[1], *cfg.model.widths[1:-1], max(len(ds.classes), 2)]
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"widths": widths})})


def build(cfg: WorkerConfig, progress: bool = True) -> Path | None:
    """Run the whole job and publish; returns the new version's directory
    (``None`` on ranks other than 0 of a distributed run)."""
    kind = registry.of(cfg.model)
    if kind.text:  # the causal-LM engine: a kind trained from scratch (its own recipe), or a fine-tune
        from .hf_pipeline import build_hf
        from .lm_pipeline import build as build_scratch

        return (build_scratch if kind.train else build_hf)(cfg, progress)
    init_from_env()
    rank, _ = rank_world()
    ds = load_dataset(cfg)
    cfg = _fit_model_to_data(cfg, ds)
    X, y, source = torch.from_numpy(ds.X), torch.from_numpy(ds.y), torch.from_numpy(ds.source)
    dev = device_of(cfg)  # the members train and simulate there; what they publish comes back to the CPU
    work = Path(cfg.store.root) / ".work" / run_id(cfg, ds)
    work.mkdir(parents=True, exist_ok=True)
    m = cfg.method
    if m.mode == "single":
        per, unit = m.work_units()
    else:
        per, unit = len(X) * (m.directions != "sources") + len(ds.source_ids) * (m.directions != "examples"), "dir"
    bar = tqdm(total=per * m.ensemble, desc=f"simulate {m.mode}/{m.schedule}/{m.resolved_solver()} x{m.ensemble}",
               disable=not progress or rank != 0, unit=unit)
    Xd, yd, sd = X.to(dev), y.to(dev), source.to(dev)
    members = [_member(cfg, Xd, yd, sd, len(ds.source_ids), e, work, bar) for e in range(m.ensemble)]
    bar.close()
    if rank != 0:
        barrier()
        shutdown()
        return None
    path = _publish(cfg, ds, members, X, y)
    shutil.rmtree(work, ignore_errors=True)
    barrier()
    shutdown()
    return path


def _publish(cfg: WorkerConfig, ds: Dataset, members: list[dict], X, y) -> Path:
    m = cfg.method
    manifest = Manifest(
        format_version=2, model=cfg.model, recipe=cfg.train.model_dump(mode="json"),
        method=m.model_dump(mode="json"),
        data={"name": ds.name, "fingerprint": ds.fingerprint(), "n": ds.n, "dim": int(ds.X.shape[1]),
              **({"image": ds.image} if ds.image else {})},
        classes=ds.classes, source_ids=ds.source_ids, example_source=ds.source.tolist(),
        members=m.ensemble, dtype=cfg.store.dtype, examples_quant=cfg.quant(),
        has_examples=members[0]["examples"] is not None,
        has_sources=members[0]["sources"] is not None,
        extra={"members": [mb["stats"] for mb in members], "preset": cfg.preset},
    )
    ex = [mb["examples"] for mb in members] if manifest.has_examples else None
    src = [mb["sources"] for mb in members] if manifest.has_sources else None
    training = (X, y) if cfg.store.include_training_data else None
    return publish(cfg.store.root, manifest, [mb["params"] for mb in members], ex, src, training,
                   keep=cfg.store.keep, assets=heldout.asset(ds.heldout))
