"""One attributor for every model kind: a store made resident on a device,
answering batches of queries with the forward-only readout. Free of HTTP and
settings: the service, the offline score and the audits all use it.

What is the same for every kind lives here: per member ``e`` the trained
parameters, the document rows (``rows[e]``: the documents' own responses, or
a basis of ``r`` rows with coefficients ``coef[e] (n, r)``) and, where the
store has them, per-source rows (``source_rows[e]``: each source's response,
the exact sum of its documents'); a readout is ``τ (B, R)`` of every member's
rows, averaged over members; sources are read from their own rows when stored
(so a query's source scores never depend on the granularity asked for), else
summed from the documents'. What a kind supplies (a subclass):

* how it holds a member's rows and reads them: ``_scores(e, rows, batch,
  per_token)`` -> ``(τ (B, R), τ_t (B, T, R) or None, aux)``, its
  hand-derived fast path (``influence.mlp.readout.linear_stack_scores``,
  ``influence.text.lm_math.jvp_scores``); ``aux`` is whatever of the member's
  primal pass the kind keeps (the text kinds' token log-probabilities);
* its query form: encoding, checks and the outputs beside the scores.

Kinds: ``influence.mlp.attributor.VectorAttributor`` (vector queries) and
``influence.text.attributor.TextAttributor`` (every causal-LM kind).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import QueryError
from .quant import PackedRows
from .store import Store


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Readout:
    """Member-averaged scores of ``B`` queries: ``examples (B, n)`` (None when
    not read), ``sources (B, S)``; per-token reads also ``token_examples`` /
    ``token_sources (B, T, ·)``; ``aux`` per member, the kind's own."""

    examples: torch.Tensor | None
    sources: torch.Tensor | None
    token_examples: torch.Tensor | None
    token_sources: torch.Tensor | None
    aux: list


def _nbytes(rows) -> int:
    if isinstance(rows, PackedRows):
        return rows.nbytes
    if torch.is_tensor(rows):
        return rows.numel() * rows.element_size()
    return sum(_nbytes(r) for r in rows)  # a kind's structured rows (the MLP's per-layer blocks)


class Attributor:
    """The readout driver (see the module doc). A subclass sets ``rows``,
    ``coef`` and ``source_rows`` (lists per member, or None) after calling
    ``__init__``, and implements ``_scores`` and ``_count``."""

    rows: list | None
    coef: list
    source_rows: list | None

    def __init__(self, store: Store, device: torch.device | str | None, dtype: torch.dtype):
        man = store.manifest
        self.manifest, self.version, self.spec = man, man.version, man.model
        self.heldout = store.heldout  # the held-out query sample, or None
        self.device = torch.device(device) if device is not None else best_device()
        self.dtype = dtype
        self.params = [{k: v.to(self.device, dtype) for k, v in p.items()} for p in store.params]
        self.example_source = torch.tensor(man.example_source, dtype=torch.long, device=self.device)
        self.n_examples, self.n_sources = len(man.example_source), len(man.source_ids)

    def _scores(self, e: int, rows, batch, per_token: bool):
        """Member ``e``'s ``(τ (B, R), τ_t (B, T, R) or None, aux)`` of ``rows`` for ``batch``."""
        raise NotImplementedError

    def _count(self, rows) -> int:
        """Rows (forward tangents) in one member's ``rows``."""
        raise NotImplementedError

    @property
    def packed(self) -> bool:
        """Whether the per-document rows are held as their codes (``PackedRows``)."""
        return any(isinstance(b, PackedRows) for b in self.rows or [])

    def resident_bytes(self) -> int:
        """Bytes of the stored response rows held on the device (documents, coefficients, source rows)."""
        return sum(_nbytes(r) for r in (self.rows or []) + (self.source_rows or []) + [c for c in self.coef
                                                                                      if c is not None])

    def tangents(self, examples: bool) -> int:
        """Rows one query is read against, over all members: ``examples`` False
        is a sources-only answer (per-source rows when stored)."""
        docs = sum(self._count(r) for r in self.rows or [])
        if self.source_rows is None:
            return docs
        return sum(self._count(r) for r in self.source_rows) + (docs if examples else 0)

    def sum_by_source(self, ex: torch.Tensor) -> torch.Tensor:
        """``(..., n)`` document scores -> ``(..., S)`` per-source sums."""
        out = ex.new_zeros((*ex.shape[:-1], self.n_sources))
        return out.index_add_(ex.dim() - 1, self.example_source, ex)

    def _mean(self, rows: list, batch, per_token: bool, coef: bool):
        """``(τ, τ_t or None, aux per member)`` of ``rows``, averaged over members."""
        tau = tok = None
        aux = []
        for e, r in enumerate(rows):
            t, tt, a = self._scores(e, r, batch, per_token)
            C = self.coef[e] if coef else None
            if C is not None:
                t, tt = t @ C.T, None if tt is None else tt @ C.T
            tau = t if tau is None else tau.add_(t)
            if tt is not None:
                tok = tt if tok is None else tok.add_(tt)
            aux.append(a)
        E = len(rows)
        return tau / E, None if tok is None else tok / E, aux

    def read(self, batch, examples: bool, sources: bool = True, per_token: bool = False) -> Readout:
        """Scores of ``batch`` (the kind's encoded queries): documents when
        ``examples`` (or when sources are asked of a store without source rows),
        sources when ``sources``; a ``QueryError`` naming ``granularity`` for a
        store that holds no per-document rows."""
        docs = examples or (sources and self.source_rows is None)
        if docs and self.rows is None:
            raise QueryError("granularity", "this store holds no per-example responses")
        ex = tex = src = tsrc = None
        aux: list = []
        if docs:
            ex, tex, aux = self._mean(self.rows, batch, per_token, coef=True)
        if sources and self.source_rows is not None:
            src, tsrc, aux = self._mean(self.source_rows, batch, per_token, coef=False)
        elif sources:
            src = self.sum_by_source(ex)
            tsrc = None if tex is None else self.sum_by_source(tex)
        return Readout(ex, src, tex, tsrc, aux)


def top_k(scores: torch.Tensor, k: int, order: str = "positive") -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` per row of ``(B, R)``: ``positive`` (most helpful first),
    ``negative`` (most harmful first) or ``abs``. Returns values, indices."""
    k = min(k, scores.shape[1])
    key = {"positive": scores, "negative": -scores, "abs": scores.abs()}[order]
    idx = key.topk(k, dim=1).indices
    return scores.gather(1, idx), idx
