"""Deterministic training of an MLP on ``L(θ) = mean ℓ + (wd/2)|θ|²``.

The minibatch order and initialisation come from ``seed`` alone, so a run is
reproducible; ``on_step`` sees every step's iterate and minibatch (the
single-trajectory simulation runs alongside the last K steps through it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.func import functional_call

from influence.mlp.iterates import IterateRecorder
from influence.mlp.model import MLPSpec, build_mlp, init_params

from .config import TrainConfig

StepHook = Callable[[int, dict[str, torch.Tensor], torch.Tensor], None]


@dataclass
class Trained:
    params: dict[str, torch.Tensor]
    optimizer_state: dict[str, dict[str, torch.Tensor]]  # per param: momentum_buffer / exp_avg...
    steps: int
    final_loss: float
    iterates: list[dict[str, torch.Tensor]] = field(default_factory=list)  # kept epoch ends, earliest first

    def averaged(self) -> list[dict[str, torch.Tensor]]:
        """The iterates whose responses ``method.iterates`` averages: the kept
        epoch ends, then the final model."""
        return [*self.iterates, self.params]


def make_optimizer(recipe: TrainConfig, params):
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def batch_order(n: int, batch_size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """Index tensors of every minibatch, epoch by epoch (last batch may be short)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        out += list(perm.split(batch_size))
    return out


def steps_per_run(n: int, recipe: TrainConfig) -> int:
    return recipe.epochs * -(-n // recipe.batch_size)


def train(
    spec: MLPSpec,
    X: torch.Tensor,
    y: torch.Tensor,
    recipe: TrainConfig,
    seed: int,
    on_step: StepHook | None = None,
    dtype: torch.dtype = torch.float32,
    keep_epochs: Sequence[int] = (),
) -> Trained:
    """Train from ``init_params(spec, seed)``. X ``(n, d)``, y ``(n,)``, on
    their device (initialisation and minibatch order are drawn on the CPU,
    so every device starts from the same parameters and batches).
    ``keep_epochs``: epoch ends whose iterates are kept in ``Trained.iterates``
    (the last epoch's is ``Trained.params``)."""
    dev = X.device
    model = build_mlp(spec).to(dtype=dtype, device=dev)
    params = {k: v.to(dev).requires_grad_(True) for k, v in init_params(spec, seed, dtype).items()}
    opt = make_optimizer(recipe, list(params.values()))
    X, y = X.to(dtype), y.long()
    loss = torch.tensor(float("nan"))
    batches = batch_order(len(X), recipe.batch_size, recipe.epochs, seed + 7919)
    keep = IterateRecorder.at_epochs(keep_epochs, len(X), recipe.batch_size, recipe.epochs)
    for t, idx in enumerate(batches):
        idx = idx.to(dev)
        keep(t, params)
        if on_step is not None:
            on_step(t, {k: v.detach() for k, v in params.items()}, idx)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(functional_call(model, params, (X[idx],)), y[idx])
        loss.backward()
        opt.step()
    state = {k: {sk: sv.detach().clone() for sk, sv in opt.state[v].items() if torch.is_tensor(sv)}
             for k, v in params.items()}
    final = {k: v.detach().clone() for k, v in params.items()}
    return Trained(final, state, len(batches), loss.item(), keep.iterates(final)[:-1])
