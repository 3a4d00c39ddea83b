"""Scalar model outputs ``f(q; θ)`` a query is scored through, as functions
of the logits, and their derivative with respect to the logits (used by the
forward-mode readout to contract the output tangent).

Shapes: ``logits (B, C)``, ``y (B,)`` int64 -> ``(B,)``.
"""

from __future__ import annotations

from typing import Literal

import torch

Output = Literal["margin", "loss", "logprob"]
OUTPUTS: tuple[str, ...] = ("margin", "loss", "logprob")


def _others_mask(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(logits, dtype=torch.bool).scatter(1, y[:, None], False)


def output(logits: torch.Tensor, y: torch.Tensor, what: Output = "margin") -> torch.Tensor:
    """margin = ``z_y − logsumexp(z_{≠y})``; loss = cross-entropy;
    logprob = ``log softmax(z)_y``."""
    zy = logits.gather(1, y[:, None])[:, 0]
    if what == "margin":
        others = logits.masked_fill(~_others_mask(logits, y), float("-inf"))
        return zy - torch.logsumexp(others, dim=1)
    logp = zy - torch.logsumexp(logits, dim=1)
    if what == "logprob":
        return logp
    if what == "loss":
        return -logp
    raise ValueError(f"unknown output {what!r}; choose one of {OUTPUTS}")


def output_grad(logits: torch.Tensor, y: torch.Tensor, what: Output = "margin") -> torch.Tensor:
    """``∂f/∂logits``, shape ``(B, C)``: a function of the forward pass alone."""
    onehot = torch.zeros_like(logits).scatter(1, y[:, None], 1.0)
    if what == "margin":
        others = logits.masked_fill(~_others_mask(logits, y), float("-inf"))
        return onehot - torch.softmax(others, dim=1)
    p = torch.softmax(logits, dim=1)
    if what == "logprob":
        return onehot - p
    if what == "loss":
        return p - onehot
    raise ValueError(f"unknown output {what!r}; choose one of {OUTPUTS}")


def cross_entropy_hessian(logits: torch.Tensor) -> torch.Tensor:
    """Hessian of cross-entropy in the logits, ``diag(p) − p pᵀ``: ``(B, C, C)``."""
    p = torch.softmax(logits, dim=1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
