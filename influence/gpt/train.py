"""Training recipe of the language-model protocol (``docs/lm-protocol.md``).

AdamW, one parameter group: lr_max 2e-3, betas (0.9, 0.95), eps 1e-8, weight
decay 0.01 on all parameters (LayerNorm and embeddings included). Loss: mean
token cross-entropy over the batch's ``B × 64`` targets. ``B = 8`` blocks,
8 epochs. Order: ``rng = np.random.default_rng(seed)``; each epoch ``perm =
rng.permutation(1800)`` over all training blocks, keep the run's own blocks in
that order, cut into batches of 8 (the last may be smaller). A run on ``n``
blocks makes ``S = 8 × ceil(n / 8)`` steps. Learning rate at step ``t``:
``lr_max (t+1)/W`` for ``t < W``, ``W = max(1, round(0.05 S))``, then
``lr_max · ½ (1 + cos(π (t − W)/(S − W)))``. The model is initialised by
``GPTSpec.build(seed)`` (its own ``torch.manual_seed(seed)``), so runs with
the same seed share initialisation and the relative order of common blocks.

Choices where the protocol is silent: the learning rate of step ``t`` is set
before that step's update (the first update uses ``lr_max / W``); ``round`` is
Python's (half to even); ``W = S`` (``S − W = 0``) is guarded; float32 unless
``dtype`` says otherwise; ``threads`` sets ``torch.set_num_threads`` for the
run and restores it afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from ..text.causal import lm_loss
from .model import GPTSpec

LR_MAX = 2e-3
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.01
BATCH = 8
EPOCHS = 8


def n_steps(n: int, batch: int = BATCH, epochs: int = EPOCHS) -> int:
    return epochs * -(-n // batch)


def lr_at(t: int, S: int, lr_max: float = LR_MAX) -> float:
    """The protocol's warm-up + cosine schedule at step ``t`` of ``S``."""
    W = max(1, round(0.05 * S))
    if t < W:
        return lr_max * (t + 1) / W
    return lr_max * 0.5 * (1.0 + math.cos(math.pi * (t - W) / max(1, S - W)))


def batch_order(
    keep: np.ndarray | None, seed: int, n_total: int = 1800, batch: int = BATCH, epochs: int = EPOCHS
) -> list[np.ndarray]:
    """Global block indices of every batch, epoch by epoch. ``keep``: the
    run's blocks (any order, unique) or ``None`` for all ``n_total``."""
    rng = np.random.default_rng(seed)
    own = None if keep is None else np.zeros(n_total, dtype=bool)
    if own is not None:
        own[np.asarray(keep, dtype=np.int64)] = True
    out = []
    for _ in range(epochs):
        perm = rng.permutation(n_total)
        if own is not None:
            perm = perm[own[perm]]
        out += [perm[i : i + batch] for i in range(0, len(perm), batch)]
    return out


def train_lm(
    spec: GPTSpec,
    blocks: torch.Tensor,
    keep: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = False,
    threads: int | None = None,
    dtype: torch.dtype = torch.float32,
    on_step: Callable[[int, torch.nn.Module, torch.Tensor], None] | None = None,
    device: str | torch.device | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Train from ``spec.build(seed)`` on ``blocks (N, 65) int64`` restricted to
    ``keep``. Returns ``(params, stats)``: detached parameters by name and
    ``{"steps", "final_loss", "losses" (per step), "seconds", "n_blocks"}``.
    ``on_step(t, model, batch)`` is called before step ``t``'s update.
    ``device`` (default: ``blocks``' own): where the model trains; the
    initialisation and the batch order are drawn on the CPU as always, the
    returned parameters stay on ``device``."""
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        dev = blocks.device if device is None else torch.device(device)
        model = spec.build(seed, dtype).to(dev)
        blocks = blocks.to(dev)
        order = batch_order(keep, seed, n_total=blocks.shape[0])
        S = len(order)
        opt = torch.optim.AdamW(model.parameters(), lr=LR_MAX, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
        step_loss = torch.empty(S, dtype=dtype, device=dev)  # read back once at the end: no sync per step
        t0 = time.perf_counter()
        for t, idx in enumerate(order):
            for g in opt.param_groups:
                g["lr"] = lr_at(t, S)
            xb = blocks[torch.from_numpy(idx).to(dev)]
            if on_step is not None:
                on_step(t, model, xb)
            loss = lm_loss(model, xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_loss[t] = loss.detach()
            if progress and (t % 200 == 0 or t == S - 1):
                print(f"step {t}/{S} loss {step_loss[t].item():.4f} lr {lr_at(t, S):.2e} "
                      f"{time.perf_counter() - t0:.1f}s")
        losses = step_loss.cpu().double().numpy()
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        stats = {
            "steps": S,
            "final_loss": float(losses[-1]) if S else float("nan"),
            "losses": losses,
            "seconds": time.perf_counter() - t0,
            "n_blocks": int(blocks.shape[0] if keep is None else len(keep)),
        }
        return params, stats
    finally:
        torch.set_num_threads(old_threads)


@torch.no_grad()
def perplexity(spec: GPTSpec, params: dict[str, torch.Tensor], windows: torch.Tensor, batch: int = 256) -> float:
    """``exp`` of the mean token loss over ``windows (M, 65)``."""
    from ..text.causal import sequence_logprob

    model = spec.build(0, next(iter(params.values())).dtype)
    model.load_state_dict(params)
    tot = 0.0
    for i in range(0, windows.shape[0], batch):
        tot += float(sequence_logprob(model, windows[i : i + batch]).sum())
    return math.exp(-tot / windows.shape[0])
