"""The text query form of the one attributor (``influence.attributor``): a
store of any causal-LM kind (``gpt``, ``hf``, a plug-in) resident on a device,
answering batches of text queries with the forward-only readout.

Per member, the stored per-document responses are a basis ``B (r, p)`` and
coefficients ``C (n, r)`` (or exact rows, ``r = n``). One query batch costs
``r`` forward tangents per member (``lm_math.jvp_scores``) and two small
products: documents ``τ_B Cᵀ`` ``(Q, n)`` and sources, the sums of their
documents' scores, ``(Q, S)``. A store with per-source rows ``U_S (S, p)``
(``has_sources``: each the exact sum of its documents' responses) reads
sources from those instead, ``S`` tangents per member whether or not the
documents are read too (so a query's source scores never depend on the
granularity asked for, nor on what it is batched with). Members are averaged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from .. import registry
from ..attributor import Attributor
from ..errors import QueryError, StoreError
from ..quant import PackedRows
from ..store import Store
from .causal import pad_right
from .lm_math import jvp_scores


@dataclass
class TextQuery:
    """One encoded query: ``ids`` (≥ 2 tokens), ``n_targets`` scored from the
    end (all but the first token for plain text; the completion's tokens for
    a prompt/completion pair), and the count of out-of-vocabulary words.
    From ``TextAttributor.encode`` also: ``tokens``, every token as readable
    text (a BPE store's pieces of the text itself, joining back into the
    text, or the prompt + completion; a word-level store's words), and
    ``target_spans``, each target token's ``(start, end)`` characters of the
    text (of the completion for a prompt/completion pair), tiling the
    targets' part of it (``influence.text.pieces``), and ``target_text``,
    the string they index (the text, or the completion)."""

    ids: list[int]
    n_targets: int
    oov: int
    tokens: list[str] | None = None
    target_spans: list[tuple[int, int]] | None = None
    target_text: str | None = None


@dataclass
class TextScores:
    """``logprob (Q,)`` = f(q), ``token_logprobs`` per query (its targets),
    ``examples (Q, n)`` (None for a sources-only read) and ``sources (Q, S)``: τ in units of f per unit
    up-weighting of a document's token losses (removing a document moves
    f by about ``−τ / N_tok``, ``N_tok`` the store's training targets)."""

    logprob: torch.Tensor
    token_logprobs: list[list[float]]
    examples: torch.Tensor | None
    sources: torch.Tensor
    # per_token reads: per query, each target token's own scores ``(n_targets, S)`` / ``(n_targets, n)``
    # (``τ_t``: their mean over the query's targets is its row of ``sources`` / ``examples``)
    token_sources: list[torch.Tensor] | None = None
    token_examples: list[torch.Tensor] | None = None


class TextAttributor(Attributor):
    """A text store (any causal-LM kind) on ``device``: per member its
    parameters, document rows (float blocks in the tangent dtype, or packed
    codes dequantised a block at a time) and source rows, read by
    ``lm_math.jvp_scores``; f and the token log-probabilities come from the
    readout's own primal pass."""

    def __init__(self, store: Store, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 tangent_dtype: torch.dtype | None = None):
        """``dtype``: the primal, f, token log-probabilities and score sums;
        ``tangent_dtype`` (default ``dtype``): the forward tangents, with the
        stored responses and a copy of the parameters held in it
        (``lm_math.jvp_scores``' ``tangent_params``; ``bfloat16`` halves their
        memory and, on CPUs with AVX512-BF16, about halves the readout time)."""
        kind = registry.of(store.manifest.model)
        if not kind.text:
            raise StoreError(f"{store.path}: model kind {kind.name!r} is not a text model")
        super().__init__(store, device, dtype)
        self.tangent_dtype = tangent_dtype or dtype
        self.model, self.tokenizer = kind.load(store, self.device, dtype)
        if not self.model.manual_tangents:  # reduced-precision tangents need the hand-derived rules (gpt)
            self.tangent_dtype = dtype
        self.documents = json.loads(store.assets["documents.json"].decode())
        tdt = self.tangent_dtype
        self.tparams = None if tdt == dtype else [{k: v.to(tdt) for k, v in p.items()} for p in self.params]
        layout = self.spec.layout()
        self.rows = [PackedRows(q).to(self.device) for q in store.packed] if store.packed else \
            [layout.flatten(b).to(self.device, tdt) for b in store.examples]
        # per member C (n, r) of a compressed store; None: the rows are the documents' own (r = n)
        self.coef = [c.to(self.device, dtype) for c in store.example_coef] if store.example_coef else \
            [None for _ in self.rows]
        self.source_rows = [layout.flatten(b).to(self.device, tdt) for b in store.sources] if store.sources \
            else None
        n = self.n_examples
        self.membership = torch.zeros(n, self.n_sources, device=self.device, dtype=dtype).index_put_(
            (torch.arange(n, device=self.device), self.example_source), torch.ones(n, device=self.device, dtype=dtype))

    def _count(self, rows) -> int:
        return rows.shape[0]

    def sum_by_source(self, ex: torch.Tensor) -> torch.Tensor:
        """``(..., n)`` -> ``(..., S)`` as one GEMM with the 0/1 membership (the text kinds' sums)."""
        return ex @ self.membership

    def _scores(self, e: int, rows, batch, per_token: bool):
        x, mask = batch
        tp = None if self.tparams is None else self.tparams[e]
        t, lp, *pt = jvp_scores(self.model, self.params[e], rows, x, mask, logprobs=True, tangent_params=tp,
                                per_token=per_token)
        return t, pt[0] if per_token else None, lp

    @property
    def tangents_per_query(self) -> int:
        """Forward tangents of one query row with its documents (all members)."""
        return self.tangents(examples=True)

    def encode(self, text: str | None = None, prompt: str | None = None, completion: str | None = None,
               pretokenized: bool = False) -> TextQuery:
        """Tokenise a query, once (see ``Tokenizer.tokenize``); a ``QueryError``
        naming the field(s) (``text``, or ``prompt`` / ``completion``) for what
        cannot be scored: fewer than 2 tokens, an empty prompt or completion,
        more than the model's context + 1 tokens."""
        tok, ctx = self.tokenizer, self.model.context
        if text is not None:
            words, fields = tok.tokenize(text, pretokenized), ("text",)
            n_t = len(words) - 1
            parts = [text]
            if len(words) < 2:
                raise QueryError("text", f"needs at least 2 tokens (one to predict after one of context), got "
                                 f"{len(words)}")
        else:
            pw, cw = tok.tokenize(prompt or "", pretokenized), tok.tokenize(completion or "", pretokenized)
            if not pw or not cw:
                raise QueryError("prompt" if not pw else "completion", "needs at least one token")
            words, n_t, fields = pw + cw, len(cw), ("prompt", "completion")
            parts = [prompt, completion]
        if len(words) > ctx + 1:
            raise QueryError(fields[0], f"{len(words)} tokens: at most {ctx + 1} per query (the model's context of "
                             f"{ctx} + 1)", fields)
        ids = tok.encode(words)
        unk = self.tokenizer.unk_id
        spans = [tok.spans(t, pretokenized) for t in parts]
        shown = [t[a:b] for t, sp in zip(parts, spans, strict=True) for a, b in sp] if tok.lossless \
            else tok.decode(ids)
        return TextQuery(ids, n_t, 0 if unk is None else sum(i == unk for i in ids), shown, spans[-1][-n_t:],
                         parts[-1])

    def batch(self, queries: list[TextQuery], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``x (Q, T+1)`` and the target mask ``(Q, T)`` (padding
        and prompt targets 0); causal attention keeps rows independent.
        ``length``: pad to this many tokens instead of the longest query's."""
        x, mask = pad_right([q.ids for q in queries], length=length)
        for i, q in enumerate(queries):
            first = len(q.ids) - 1 - q.n_targets
            mask[i, :first] = False
        return x.to(self.device), mask.to(self.device)

    def window_sources(self, x: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        """Per-source scores ``(m, S)`` of token windows ``x (m, T+1)``, every
        target scored (f = the window's mean log-probability), read
        sources-only ``chunk`` windows at a time (bounded memory)."""
        qs = [TextQuery(row.tolist(), len(row) - 1, 0) for row in x]
        return torch.cat([self.score(qs[i:i + chunk], examples=False).sources for i in range(0, len(qs), chunk)])

    @torch.no_grad()
    def score(self, queries: list[TextQuery], length: int | None = None, examples: bool = True,
              per_token: bool = False) -> TextScores:
        """Score a batch, padded to ``length`` tokens (default: the longest).
        ``examples`` False: sources only (``examples`` is then None when the
        store has per-source rows; without them the documents are read anyway).
        ``per_token``: also every target token's scores (``TextScores.token_*``),
        from the same tangents (no extra row read); the sequence scores are
        the same numbers with it on or off."""
        x, mask = self.batch(queries, length)
        r = self.read((x, mask), examples, per_token=per_token)
        m = mask.to(self.dtype)
        f = tok = None
        for lp in r.aux:  # (Q, T) token log-probabilities of each member's primal pass
            fe = (lp * m).sum(-1) / m.sum(-1).clamp_min(1.0)  # sequence_logprob's masked mean
            f, tok = (fe, lp) if f is None else (f.add_(fe), tok.add_(lp))
        E = len(r.aux)
        f, tok = f / E, tok / E
        toks = [tok[i][mask[i]].tolist() for i in range(len(queries))]
        if not per_token:
            return TextScores(f, toks, r.examples, r.sources)
        pick = lambda t: None if t is None else [t[i][mask[i]] for i in range(len(queries))]  # noqa: E731
        return TextScores(f, toks, r.examples, r.sources, pick(r.token_sources),
                          pick(r.token_examples) if examples else None)
