"""A store made resident on a device, answering batches of queries with the
forward-only readout. Free of HTTP and settings: the service and the
offline scoring CLI both use it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import QueryError
from ..outputs import OUTPUTS, Output
from ..store import Store
from .readout import LayerResponses, linear_stack_scores, mlp_forward


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


class Attributor:
    """Holds params and per-layer response blocks of every member on
    ``device``; responses keep the store's dtype unless ``resident_dtype``
    overrides it, and are upcast per chunk to ``compute_dtype``."""

    def __init__(self, store: Store, device: torch.device | str | None = None,
                 compute_dtype: torch.dtype = torch.float32, resident_dtype: torch.dtype | None = None):
        man = store.manifest
        self.manifest, self.version, self.heldout = man, man.version, store.heldout
        self.spec = man.model
        self.device = torch.device(device) if device is not None else best_device()
        self.dtype = self.tangent_dtype = compute_dtype  # the readout's tangents run in compute_dtype
        examples = store.dense_examples()
        rdt = resident_dtype or next(iter((examples or store.sources)[0].values())).dtype
        self.params = [{k: v.to(self.device, compute_dtype) for k, v in p.items()} for p in store.params]
        self.examples = [_layers(b, self.device, rdt) for b in examples] if examples else None
        self.sources = [_layers(b, self.device, rdt) for b in store.sources] if store.sources else None
        self.example_source = torch.tensor(man.example_source, dtype=torch.long, device=self.device)
        self.n_examples, self.n_sources = len(man.example_source), len(man.source_ids)

    packed = False  # (vector rows are held as float blocks)

    def resident_bytes(self) -> int:
        """Bytes of the stored response rows held on the device (examples and sources, every member)."""
        blocks = [t for rows in (self.examples or []) + (self.sources or []) for layer in rows for t in layer]
        return sum(t.numel() * t.element_size() for t in blocks)

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

    @staticmethod
    def _probs(forwards) -> torch.Tensor:
        """Ensemble-mean class probabilities ``(B, C)`` from each member's forward pass."""
        return torch.stack([torch.softmax(f[0], 1) for f in forwards]).mean(0)

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
        (the service). ``y`` may also hold ``-1`` for "the predicted class".
        One forward pass per member serves the probabilities, the targets
        and both response sets."""
        x = x.to(self.device, self.dtype)
        forwards = [mlp_forward(p, self.spec, x) for p in self.params]
        probs = self._probs(forwards)
        pred = probs.argmax(1)
        target = pred if y is None else torch.where(y.to(self.device) >= 0, y.to(self.device), pred)
        ex = None
        if examples or (sources and not self.sources):
            ex = self._mean(self.examples, forwards, x, target, kind)
        src = None
        if sources:
            src = self._mean(self.sources, forwards, x, target, kind) if self.sources else self.sum_by_source(ex)
        if ex is not None and not examples:
            ex = None
        return Scores(probs, pred, target, ex, src)

    def _mean(self, blocks, forwards, x, target, kind) -> torch.Tensor:
        if blocks is None:
            raise QueryError("granularity", "this store holds no per-example responses")
        total = None
        for p, layers, fw in zip(self.params, blocks, forwards, strict=True):
            s = linear_stack_scores(p, self.spec, layers, x, target, kind, forward=fw)
            total = s if total is None else total.add_(s)
        return total / len(blocks)

    def sum_by_source(self, ex: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` example scores -> ``(B, S)`` per-source sums."""
        out = ex.new_zeros((ex.shape[0], self.n_sources))
        return out.index_add_(1, self.example_source, ex)


def top_k(scores: torch.Tensor, k: int, order: str = "positive") -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` per row of ``(B, R)``: ``positive`` (most helpful first),
    ``negative`` (most harmful first) or ``abs``. Returns values, indices."""
    k = min(k, scores.shape[1])
    key = {"positive": scores, "negative": -scores, "abs": scores.abs()}[order]
    idx = key.topk(k, dim=1).indices
    return scores.gather(1, idx), idx
