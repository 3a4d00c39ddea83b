"""The vector query form of the one attributor (``influence.attributor``): an
MLP store's rows read by the linear-stack readout, with the class
probabilities, predictions and targets beside the scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attributor import Attributor
from ..errors import QueryError
from ..outputs import OUTPUTS, Output
from ..store import Store
from .readout import LayerResponses, linear_stack_scores, mlp_forward


@dataclass
class Scores:
    """Readout of a batch of ``B`` queries, averaged over ensemble members.

    probs ``(B, C)``; pred, target ``(B,)``; examples ``(B, n)`` and
    sources ``(B, S)`` in output units per unit upweighting (``τ`` of the
    method page; removing an example moves the output by about ``−τ/n``).
    """

    probs: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    examples: torch.Tensor | None
    sources: torch.Tensor | None


def _layers(blocks: dict[str, torch.Tensor], device, dtype) -> LayerResponses:
    names = sorted({k.split(".")[0] for k in blocks}, key=int)
    return [(blocks[f"{n}.weight"].to(device, dtype).contiguous(), blocks[f"{n}.bias"].to(device, dtype))
            for n in names]


class VectorAttributor(Attributor):
    """An MLP store: per member its parameters and per-layer response blocks
    (``rows``: examples, ``source_rows``: sources) on ``device``; responses keep
    the store's dtype unless ``resident_dtype`` overrides it, and are upcast per
    chunk to ``compute_dtype``. A member's rows are read by the linear-stack
    readout (``linear_stack_scores``) from one forward pass per member, shared
    by the probabilities, the targets and both row sets."""

    def __init__(self, store: Store, device: torch.device | str | None = None,
                 compute_dtype: torch.dtype = torch.float32, resident_dtype: torch.dtype | None = None):
        super().__init__(store, device, compute_dtype)
        self.tangent_dtype = compute_dtype  # the readout's tangents run in compute_dtype
        examples = store.dense_examples()
        rdt = resident_dtype or next(iter((examples or store.sources)[0].values())).dtype
        self.rows = [_layers(b, self.device, rdt) for b in examples] if examples else None
        self.source_rows = [_layers(b, self.device, rdt) for b in store.sources] if store.sources else None
        self.coef = [None] * len(self.params)

    def _count(self, rows: LayerResponses) -> int:
        return rows[0][0].shape[0]

    def _scores(self, e: int, rows: LayerResponses, batch, per_token: bool):
        x, target, kind, forwards = batch
        return linear_stack_scores(self.params[e], self.spec, rows, x, target, kind, forward=forwards[e]), None, None

    def check(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Raise ``QueryError`` naming the field for a batch that does not fit."""
        if x.dim() != 2 or x.shape[1] != self.spec.in_dim:
            raise QueryError("inputs", f"expected shape (B, {self.spec.in_dim}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise QueryError("inputs", "contains NaN or infinity")
        if y is not None:
            if y.shape != (x.shape[0],):
                raise QueryError("targets", f"expected {x.shape[0]} targets, got shape {tuple(y.shape)}")
            if ((y < 0) | (y >= self.spec.n_classes)).any():
                raise QueryError("targets", f"must be in [0, {self.spec.n_classes})")

    @torch.no_grad()
    def score(self, x: torch.Tensor, y: torch.Tensor | None = None, kind: Output = "margin",
              examples: bool = True, sources: bool = True) -> Scores:
        """x ``(B, d)``; y ``(B,)`` targets or None for the predicted class."""
        if kind not in OUTPUTS:
            raise QueryError("output", f"must be one of {OUTPUTS}")
        self.check(x, y)
        return self.readout(x, y, kind, examples, sources)

    @torch.no_grad()
    def readout(self, x: torch.Tensor, y: torch.Tensor | None = None, kind: Output = "margin",
                examples: bool = True, sources: bool = True) -> Scores:
        """``score`` without the checks, for callers that validated already
        (the service). ``y`` may also hold ``-1`` for "the predicted class"."""
        x = x.to(self.device, self.dtype)
        forwards = [mlp_forward(p, self.spec, x) for p in self.params]
        probs = torch.stack([torch.softmax(f[0], 1) for f in forwards]).mean(0)  # ensemble mean (B, C)
        pred = probs.argmax(1)
        target = pred if y is None else torch.where(y.to(self.device) >= 0, y.to(self.device), pred)
        r = self.read((x, target, kind, forwards), examples, sources)
        return Scores(probs, pred, target, r.examples if examples else None, r.sources)
