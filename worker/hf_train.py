"""Fine-tuning a Hugging Face causal LM (the ``hf`` kind): the recipe of
``ft-protocol.md`` ("LoRA fine-tune"), for LoRA, named or all parameters.

AdamW on the trained parameters only (lr, betas, eps, weight decay from the
typed ``FTRecipe``; ft-protocol: 1e-3, 0.9/0.95, 1e-8, 0), mean token
cross-entropy over the batch's ``B × 64`` targets (``gpt.lm_loss`` through
the ``CausalLM`` interface), ``B = 8`` blocks, 4 epochs. Order and schedule
exactly as ``lm-protocol.md``'s (``influence.gpt.train.batch_order`` / ``lr_at``:
per-epoch permutation of all blocks from ``default_rng(seed)``, keep the
run's own blocks, warm-up 5% then cosine, S and W of the run itself).
``torch.manual_seed(seed)`` is called right before the base is wrapped with
``peft`` (``influence.hf.model.add_lora``): runs with the same seed share the
LoRA initialisation and the relative order of their common blocks.

The base is loaded fresh for every run (``load_model``: local directory,
checked), so a run never sees another run's weights. Runs on ``device``
(CUDA when the caller passes it; the same code path as the CPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from influence.gpt.train import batch_order, lr_at
from influence.hf.loader import load_model
from influence.hf.model import DTYPES, HFCausalLM, wrap
from influence.hf.spec import HFSpec
from influence.text.causal import lm_loss


@dataclass(frozen=True)
class FTRecipe:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    batch: int = 8
    epochs: int = 4


def load_wrapped(base_dir: str | Path, spec: HFSpec, seed: int, device: str | torch.device = "cpu",
                 params: dict[str, torch.Tensor] | None = None) -> HFCausalLM:
    """The base at ``base_dir`` on ``device`` with ``spec``'s trained subspace set
    up (LoRA seeded by ``seed``); ``params`` (trained parameters by name) copied
    in when given: a fine-tuned member restored from its checkpoint."""
    model = wrap(load_model(base_dir, DTYPES[spec.dtype]).to(torch.device(device)), spec, seed=seed)
    if params is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in params:
                    p.copy_(params[name])
    return model


def finetune(base_dir: str | Path, spec: HFSpec, blocks: torch.Tensor, keep: np.ndarray | None, seed: int,
             recipe: FTRecipe = FTRecipe(), device: str | torch.device = "cpu", progress: bool = False,
             threads: int | None = None) -> tuple[HFCausalLM, dict[str, torch.Tensor], dict]:
    """Fine-tune ``spec``'s trained subspace of the base at ``base_dir`` on
    ``blocks (N, T+1) int64`` restricted to ``keep`` (global block indices,
    ``None`` = all). Returns ``(model, trained params (detached), stats)``;
    stats: ``steps``, ``final_loss``, ``seconds``, ``n_blocks``."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        model = load_wrapped(base_dir, spec, seed, dev)
        trained = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                                weight_decay=recipe.weight_decay)
        order = batch_order(keep, seed, n_total=blocks.shape[0], batch=recipe.batch, epochs=recipe.epochs)
        S = len(order)
        blocks = blocks.to(dev)
        t0, loss = time.perf_counter(), torch.tensor(float("nan"))
        for t, idx in enumerate(tqdm(order, desc=f"fine-tune seed {seed}", unit="step", disable=not progress)):
            for g in opt.param_groups:
                g["lr"] = lr_at(t, S, recipe.lr)
            loss = lm_loss(model, blocks[torch.from_numpy(idx).to(dev)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        loss = loss.detach()
        stats = {"steps": S, "final_loss": loss.item(), "seconds": time.perf_counter() - t0,
                 "n_blocks": int(blocks.shape[0] if keep is None else len(keep))}
        return model, model.trained(), stats
    finally:
        torch.set_num_threads(old)
