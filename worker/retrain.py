"""Many MLPs retrained side by side on subsets of the training set, with
exactly the semantics of ``worker.train.train(spec, X[idx], y[idx], recipe,
seed)`` per model: the ground truth of the worker's ``audit`` and of
``bench.sources.groundtruth``.

``train_padded`` stacks the models' parameters (``(M, *shape)`` per tensor,
one ``torch.baddbmm`` per layer). Every model keeps its own minibatch order
(``batch_order(n_m, …)`` over its own subset) and its own number of steps;
batches are padded to ``batch_size`` with zero-weight slots (a model's loss
is the mean over its real slots) and a model whose schedule has ended takes
no more updates. SGD only; ``train_models`` falls back to one
``worker.train`` run per model for other optimizers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from influence.mlp.model import MLPSpec, init_params
from influence.outputs import output

from .config import TrainConfig
from .train import batch_order, train

_ACT = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu}


def forward_stacked(params: dict[str, torch.Tensor], spec: MLPSpec, x: torch.Tensor) -> torch.Tensor:
    """Stacked params ``(M, o, i)`` / ``(M, o)``; x ``(M, B, d)`` or shared
    ``(B, d)`` -> logits ``(M, B, C)``."""
    n_layers = len(spec.widths) - 1
    m = params["0.weight"].shape[0]
    a = x if x.dim() == 3 else x.expand(m, *x.shape)
    for l in range(n_layers):
        w, b = params[f"{2 * l}.weight"], params[f"{2 * l}.bias"]
        a = torch.baddbmm(b[:, None, :], a, w.transpose(1, 2))
        if l < n_layers - 1:
            a = _ACT[spec.activation](a)
    return a


def margins_stacked(params: dict[str, torch.Tensor], spec: MLPSpec, Xq: torch.Tensor,
                    yq: torch.Tensor) -> torch.Tensor:
    """``(M, m)`` margins (``influence.outputs``) of every model on every
    query's label ``yq (m,)``."""
    with torch.no_grad():
        logits = forward_stacked(params, spec, Xq)
        m = logits.shape[0]
        return output(logits.reshape(-1, logits.shape[-1]), yq.repeat(m), "margin").view(m, -1)


def train_padded(spec: MLPSpec, X: torch.Tensor, y: torch.Tensor, index_sets: list[np.ndarray],
                 seeds_: list[int], recipe: TrainConfig, bar=None,
                 masks: list[np.ndarray | None] | None = None) -> dict[str, torch.Tensor]:
    """Train ``M`` models side by side; model ``m`` on ``X[index_sets[m]]``
    (sorted global indices, any sizes) with seed ``seeds_[m]``, the exact
    semantics of ``worker.train.train(spec, X[idx], y[idx], recipe, seed)``
    (SGD). ``masks[m]`` (``(n,)`` bool over all examples, or None): keep
    model ``m``'s minibatch schedule but give the examples outside the mask
    zero weight (their slots are skipped, the batch mean is over the rest;
    a batch left empty still takes its momentum / weight-decay step): the
    order-matched counterfactual. Returns stacked params ``name -> (M, *shape)``."""
    if recipe.optimizer != "sgd":
        raise ValueError("train_padded implements the SGD recipe only")
    M, B = len(seeds_), recipe.batch_size
    inits = [init_params(spec, s) for s in seeds_]
    params = {k: torch.stack([p[k] for p in inits]).requires_grad_(True) for k in inits[0]}
    sets = [torch.as_tensor(np.asarray(s), dtype=torch.long) for s in index_sets]
    orders = [batch_order(len(s), B, recipe.epochs, sd + 7919) for s, sd in zip(sets, seeds_, strict=True)]
    T = max(len(o) for o in orders)
    # (T, M, B) global indices and slot weights; finished models: all-zero weights
    gidx = torch.zeros((T, M, B), dtype=torch.long)
    wts = torch.zeros((T, M, B))
    for m, (s, o) in enumerate(zip(sets, orders, strict=True)):
        for t, b in enumerate(o):
            gidx[t, m, : len(b)] = s[b]
            wts[t, m, : len(b)] = 1.0
    active_all = wts.sum(2) > 0  # (T, M): steps in each model's schedule
    for m, mk in enumerate(masks or []):
        if mk is not None:
            wts[:, m] *= torch.as_tensor(np.asarray(mk), dtype=wts.dtype)[gidx[:, m]]
    bufs: list[torch.Tensor | None] = [None] * len(params)
    lr, mom, wd = recipe.lr, recipe.momentum, recipe.weight_decay
    for t in range(T):
        g_t, w_t, act = gidx[t], wts[t], active_all[t]
        logits = forward_stacked(params, spec, X[g_t])
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[g_t].reshape(-1), reduction="none")
        ce = ce.view(g_t.shape)
        loss = ((ce * w_t).sum(1) / w_t.sum(1).clamp_min(1.0)).sum()
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():  # torch.optim.SGD, single-tensor path, only for models still training
            for j, (p, g) in enumerate(zip(params.values(), grads, strict=True)):
                shape = (M,) + (1,) * (p.dim() - 1)
                a = act.view(shape)
                d_p = g.add(p, alpha=wd) if wd else g
                if bufs[j] is None:
                    if not bool(act.all()):
                        raise AssertionError("every model trains at step 0")
                    bufs[j] = torch.clone(d_p).detach()
                else:
                    bufs[j] = torch.where(a, bufs[j].mul(mom).add_(d_p), bufs[j])
                p.add_(bufs[j] * a.to(p.dtype), alpha=-lr)
        if bar is not None:
            bar.update(int(act.sum()))
    return {k: v.detach() for k, v in params.items()}


def train_models(spec: MLPSpec, X: torch.Tensor, y: torch.Tensor, index_sets: list[np.ndarray],
                 seeds_: list[int], recipe: TrainConfig, chunk: int = 64) -> dict[str, torch.Tensor]:
    """Stacked params ``name -> (M, *shape)`` of ``M`` models, model ``m``
    trained as ``worker.train.train(spec, X[index_sets[m]], …, seeds_[m])``.
    SGD: ``train_padded`` in chunks of ``chunk`` models of similar sizes;
    other optimizers: one ``worker.train`` run per model (slower)."""
    M = len(seeds_)
    if recipe.optimizer != "sgd":
        runs = [train(spec, X[torch.as_tensor(s)], y[torch.as_tensor(s)], recipe, sd).params
                for s, sd in zip(index_sets, seeds_, strict=True)]
        return {k: torch.stack([r[k] for r in runs]) for k in runs[0]}
    order = sorted(range(M), key=lambda i: (len(index_sets[i]), i))  # similar lengths share a chunk
    out: dict[str, torch.Tensor] = {}
    for c in range(0, M, chunk):
        ids = order[c : c + chunk]
        P = train_padded(spec, X, y, [index_sets[i] for i in ids], [seeds_[i] for i in ids], recipe)
        for k, v in P.items():
            if k not in out:
                out[k] = torch.empty((M, *v.shape[1:]), dtype=v.dtype)
            out[k][torch.as_tensor(ids)] = v
    return out
