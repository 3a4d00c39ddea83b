"""Ground truth for LDS and LOO: many MLPs trained at once.

``train_many`` trains ``M`` MLPs side by side on stacked parameters
(``(M, *shape)`` per tensor, ``torch.baddbmm`` per layer) with exactly the
semantics of ``worker.train.train``: initialisation ``init_params(spec,
seed)``, minibatches ``batch_order(n_m, batch_size, epochs, seed + 7919)``
over the model's own training subset (indices into the sorted subset, as
``train(spec, X[subset], ...)`` sees them), mean cross-entropy per batch,
and torch's SGD update (weight decay added to the gradient, momentum buffer
initialised with the first gradient, no dampening, no Nesterov).
``check_matches_worker`` verifies this against ``worker.train``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench.digits.protocol import CACHE, Data, Protocol, base_config, loo_examples, seeds, subsets
from influence.mlp.iterates import IterateRecorder
from influence.mlp.model import MLPSpec, init_params
from influence.outputs import output
from worker.config import TrainConfig
from worker.retrain import forward_stacked
from worker.train import batch_order, train

forward_many = forward_stacked  # one stacked forward for the bench and the audit (worker/retrain.py)


def train_many(spec: MLPSpec, X: torch.Tensor, y: torch.Tensor, index_sets: np.ndarray, seeds_: list[int],
               recipe: TrainConfig, drop: np.ndarray | None = None, bar=None,
               on_step=None) -> dict[str, torch.Tensor]:
    """Train ``M = len(seeds_)`` models; model ``m`` on ``X[index_sets[m]]``
    (``(M, n_m)``, all subsets the same size) with seed ``seeds_[m]``.
    ``drop (M,)``: optional global index removed from the model's batches
    (its slot is skipped; the batch mean is over the rest), -1 for none.
    ``on_step(t, params)``: called before step ``t`` with the stacked
    iterate (``influence.simulate.IterateRecorder`` keeps epoch ends).
    Returns stacked params ``name -> (M, *shape)``. SGD only."""
    if recipe.optimizer != "sgd":
        raise ValueError("train_many implements the SGD recipe only")
    sets = torch.as_tensor(np.asarray(index_sets), dtype=torch.long)
    m, n = sets.shape
    inits = [init_params(spec, s) for s in seeds_]
    params = {k: torch.stack([p[k] for p in inits]).requires_grad_(True) for k in inits[0]}
    orders = [batch_order(n, recipe.batch_size, recipe.epochs, s + 7919) for s in seeds_]
    dropt = None if drop is None else torch.as_tensor(np.asarray(drop), dtype=torch.long)[:, None]
    bufs: list[torch.Tensor | None] = [None] * len(params)
    lr, mom, wd = recipe.lr, recipe.momentum, recipe.weight_decay
    for t in range(len(orders[0])):
        if on_step is not None:
            on_step(t, params)
        gidx = torch.gather(sets, 1, torch.stack([o[t] for o in orders]))  # (M, B)
        logits = forward_many(params, spec, X[gidx])
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[gidx].reshape(-1), reduction="none")
        ce = ce.view(gidx.shape)
        if dropt is None:
            loss = ce.mean(1).sum()
        else:
            w = (gidx != dropt).to(ce.dtype)
            loss = ((ce * w).sum(1) / w.sum(1)).sum()
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():  # torch.optim.SGD, single-tensor path
            for j, (p, g) in enumerate(zip(params.values(), grads, strict=True)):
                d_p = g.add(p, alpha=wd) if wd else g
                if bufs[j] is None:
                    bufs[j] = torch.clone(d_p).detach()
                else:
                    bufs[j].mul_(mom).add_(d_p)
                p.add_(bufs[j], alpha=-lr)
        if bar is not None:
            bar.update(m)
    return {k: v.detach() for k, v in params.items()}


def train_members(cfg, data: Data, seeds_: list[int]) -> tuple[dict[str, torch.Tensor], list[list[dict]]]:
    """The full-data members of ``cfg`` (one per seed, ``train_many``): their
    stacked params and, per member, the iterates ``cfg.method.iterates``
    averages (``method.iterate_epochs``), earliest first, the final model last."""
    n = len(data.X)
    rec = IterateRecorder.at_epochs(cfg.method.iterate_epochs(cfg.train.epochs), n, cfg.train.batch_size,
                                    cfg.train.epochs)
    P = train_many(cfg.model, data.X, data.y, np.tile(np.arange(n), (len(seeds_), 1)), seeds_, cfg.train,
                   on_step=rec)
    return P, [[{k: v[e].clone() for k, v in it.items()} for it in rec.iterates(P)] for e in range(len(seeds_))]


def margins_many(params: dict[str, torch.Tensor], spec: MLPSpec, Xq: torch.Tensor, yq: torch.Tensor) -> torch.Tensor:
    """``(M, m)`` margins of every model on every query's true label."""
    with torch.no_grad():
        logits = forward_many(params, spec, Xq)
        m = logits.shape[0]
        return output(logits.reshape(-1, logits.shape[-1]), yq.repeat(m), "margin").view(m, -1)


def _run(spec, data: Data, recipe, sets, seeds_, drop=None, chunk=256, desc="train") -> np.ndarray:
    """Train in chunks of models; returns query margins ``(M, m)``."""
    out = []
    steps = recipe.epochs * -(-sets.shape[1] // recipe.batch_size)
    with tqdm(total=len(seeds_) * steps, desc=desc, unit="model-step", unit_scale=True) as bar:
        for s in range(0, len(seeds_), chunk):
            sl = slice(s, s + chunk)
            p = train_many(spec, data.X, data.y, sets[sl], seeds_[sl], recipe,
                           None if drop is None else drop[sl], bar)
            out.append(margins_many(p, spec, data.Xq, data.yq).numpy())
    return np.concatenate(out)


def compute(p: Protocol, data: Data, matched_loo: bool = True) -> dict[str, np.ndarray]:
    """All ground-truth arrays (see ``load_or_compute``)."""
    cfg = base_config()
    spec, recipe, n = cfg.model, cfg.train, len(data.X)
    t0 = time.perf_counter()
    sub = subsets(p, n)
    lds_seeds = seeds(cfg, p.lds_seeds)
    sets = np.repeat(sub, p.lds_seeds, axis=0)
    lds = _run(spec, data, recipe, sets, lds_seeds * p.n_subsets, desc="LDS subsets")
    lds = lds.reshape(p.n_subsets, p.lds_seeds, -1).mean(1)
    loo = loo_examples(p, n)
    full_seeds = seeds(cfg, p.loo_seeds)
    full = _run(spec, data, recipe, np.tile(np.arange(n), (p.loo_seeds, 1)), full_seeds, desc="full models")
    keep = np.stack([np.delete(np.arange(n), i) for i in loo])
    loo_m = _run(spec, data, recipe, np.repeat(keep, p.loo_seeds, axis=0), full_seeds * p.n_loo, desc="LOO")
    res = {"subsets": sub, "lds_margins": lds, "loo_idx": loo, "full_margins": full,
           "loo_margins": loo_m.reshape(p.n_loo, p.loo_seeds, -1)}
    if matched_loo:
        allsets = np.tile(np.arange(n), (p.n_loo * p.loo_seeds, 1))
        mm = _run(spec, data, recipe, allsets, full_seeds * p.n_loo, drop=np.repeat(loo, p.loo_seeds),
                  desc="LOO (order-matched)")
        res["loo_matched_margins"] = mm.reshape(p.n_loo, p.loo_seeds, -1)
    res["seconds"] = np.array(time.perf_counter() - t0)
    return res


def load_or_compute(p: Protocol, data: Data, matched_loo: bool = True) -> dict[str, np.ndarray]:
    """Cached ground truth: ``subsets (J, k)``, ``lds_margins (J, m)`` (seed
    mean), ``loo_idx (L,)``, ``full_margins (S, m)``, ``loo_margins (L, S, m)``
    and, with ``matched_loo``, ``loo_matched_margins (L, S, m)``: the full
    model's own minibatch order with the example's slot skipped."""
    cfg = base_config()
    key = p.key(data.fingerprint, cfg.train, cfg.model)
    path = CACHE / f"gt-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            res = {k: z[k] for k in z.files}
        if not matched_loo or "loo_matched_margins" in res:
            return res
    res = compute(p, data, matched_loo)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **res)
    return res


def check_matches_worker(data: Data, tol: float = 1e-5) -> dict[str, float]:
    """Max abs parameter difference between ``train_many`` and
    ``worker.train`` for seed 0 on the full set and on an LDS half-subset;
    raises if above ``tol``."""
    cfg = base_config()
    spec, recipe, n = cfg.model, cfg.train, len(data.X)
    sub = subsets(Protocol(), n)[0]
    out = {}
    for name, idx, seed in (("full", np.arange(n), 0), ("subset", sub, 1000)):
        ref = train(spec, data.X[idx], data.y[idx], recipe, seed).params
        got = train_many(spec, data.X, data.y, idx[None], [seed], recipe)
        out[name] = max((got[k][0] - ref[k]).abs().max().item() for k in ref)
    if max(out.values()) > tol:
        raise AssertionError(f"batched trainer differs from worker.train: {out}")
    return out
