"""Two-trajectory simulation (method page): continue training from the
trained iterate twice — once with direction ``d`` upweighted by ``ε``, once
without — with the same minibatches and the real optimizer (SGD with
momentum or Adam, continuing from its state), and take
``u_d = (θ⁺_K − θ_K) / ε``. No curvature products; a forward and backward
pass per step and direction. Runs in float64 so the difference of two
nearby trajectories keeps its digits.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap

from influence.mlp.model import MLPSpec, ParamLayout, build_mlp
from influence.mlp.propagate import Responses

from .config import MethodConfig, TrainConfig
from .train import Trained, batch_order

DT = torch.float64


def _opt_step(recipe: TrainConfig, theta, g, state, t: int):
    """One functional step of torch's SGD (momentum) / Adam; flat ``(…, p)``."""
    g = g + recipe.weight_decay * theta
    if recipe.optimizer == "sgd":
        buf = g if state["buf"] is None else recipe.momentum * state["buf"] + g
        return theta - recipe.lr * buf, {"buf": buf}
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = state["step"] + t + 1
    m = b1 * state["m"] + (1 - b1) * g
    v = b2 * state["v"] + (1 - b2) * g * g
    denom = (v.sqrt() / (1 - b2**step) ** 0.5) + eps
    return theta - recipe.lr / (1 - b1**step) * m / denom, {"m": m, "v": v, "step": state["step"]}


def _initial_state(recipe: TrainConfig, trained: Trained, layout: ParamLayout):
    st = trained.optimizer_state
    if recipe.optimizer == "sgd":
        bufs = {k: s.get("momentum_buffer") for k, s in st.items()}
        has = all(b is not None for b in bufs.values())
        return {"buf": layout.flatten({k: b.to(DT) for k, b in bufs.items()}) if has else None}
    step = int(next(iter(st.values()))["step"])
    return {"m": layout.flatten({k: s["exp_avg"].to(DT) for k, s in st.items()}),
            "v": layout.flatten({k: s["exp_avg_sq"].to(DT) for k, s in st.items()}), "step": step}


def two_trajectories(cfg: MethodConfig, recipe: TrainConfig, spec: MLPSpec, trained: Trained,
                     X, y, source, n_sources: int, seed: int, progress=None) -> Responses:
    """Per-example and/or per-source responses ``(R, p)`` in float64."""
    model = build_mlp(spec).to(DT)
    layout = ParamLayout.of(trained.params)
    X, y = X.to(DT), y.long()
    n = len(X)
    epochs = -(-cfg.steps * recipe.batch_size // n) + 1
    batches = batch_order(n, recipe.batch_size, epochs, seed)[: cfg.steps]

    def loss(theta, bx, by, ux, uy, uw, eps):
        p = layout.unflatten(theta)
        base = torch.nn.functional.cross_entropy(functional_call(model, p, (bx,)), by)
        up = torch.nn.functional.cross_entropy(functional_call(model, p, (ux,)), uy, reduction="none")
        return base + eps * (uw * up).sum()

    dloss = grad(loss)
    theta0 = layout.flatten({k: v.to(DT) for k, v in trained.params.items()})
    state0 = _initial_state(recipe, trained, layout)

    def run(members: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
        """members/weights ``(R, m)``: the examples each direction upweights."""
        r = members.shape[0]
        theta = theta0.expand(r, -1).clone()
        state = {k: (v.expand(r, -1).clone() if torch.is_tensor(v) else v) for k, v in state0.items()}
        step = vmap(dloss, in_dims=(0, None, None, 0, 0, 0, None))
        for t, idx in enumerate(batches):
            g = step(theta, X[idx], y[idx], X[members], y[members], weights, eps)
            theta, new = _opt_step(recipe, theta, g, state, t)
            state.update(new)
        return theta

    plain = run(torch.zeros((1, 1), dtype=torch.long), torch.zeros((1, 1), dtype=DT), 0.0)[0]
    groups = []
    if cfg.directions in ("examples", "both"):
        groups.append(("examples", torch.arange(n)[:, None], torch.ones((n, 1), dtype=DT)))
    if cfg.directions in ("sources", "both"):
        groups.append(("sources", *_padded_members(source, n_sources)))
    out = {"examples": None, "sources": None}
    for name, members, weights in groups:
        parts = []
        for s in range(0, len(members), cfg.chunk):
            sl = slice(s, s + cfg.chunk)
            parts.append((run(members[sl], weights[sl], cfg.epsilon) - plain) / cfg.epsilon)
            if progress is not None:
                progress.update(len(parts[-1]))
        out[name] = torch.cat(parts)
    return Responses(out["examples"], out["sources"])


def _padded_members(source: torch.Tensor, n_sources: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each source's examples as ``(S, m)`` indices and 0/1 weights."""
    lists = [torch.nonzero(source == s).flatten() for s in range(n_sources)]
    m = max(1, max(len(ix) for ix in lists))
    members = torch.zeros((n_sources, m), dtype=torch.long)
    weights = torch.zeros((n_sources, m), dtype=DT)
    for s, ix in enumerate(lists):
        members[s, : len(ix)], weights[s, : len(ix)] = ix, 1.0
    return members, weights
