"""A text store (``model.kind == "gpt"``) resident on a device, answering
batches of text queries with the forward-only readout.

Per member, the stored per-document responses are a basis ``B (r, p)`` and
coefficients ``C (n, r)`` (or exact rows, ``r = n``). One query batch costs
``r`` forward tangents per member (``lm_math.jvp_scores``) and two small
products: documents ``τ_B Cᵀ`` ``(Q, n)`` and sources, the sums of their
documents' scores, ``(Q, S)``. Members are averaged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from ..errors import QueryError
from ..store import Store
from .gpt import GPT, pad_right, sequence_logprob, token_logprobs
from .lm_math import jvp_scores
from .tokenizer import Tokenizer


@dataclass
class TextQuery:
    """One encoded query: ``ids`` (≥ 2 tokens), ``n_targets`` scored from the
    end (all but the first token for plain text; the completion's tokens for
    a prompt/completion pair), and the count of out-of-vocabulary words."""

    ids: list[int]
    n_targets: int
    oov: int


@dataclass
class TextScores:
    """``logprob (Q,)`` = f(q), ``token_logprobs`` per query (its targets),
    ``examples (Q, n)`` and ``sources (Q, S)``: τ in units of f per unit
    up-weighting of a document's token losses (removing a document moves
    f by about ``−τ / N_tok``, ``N_tok`` the store's training targets)."""

    logprob: torch.Tensor
    token_logprobs: list[list[float]]
    examples: torch.Tensor
    sources: torch.Tensor


class TextAttributor:
    def __init__(self, store: Store, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        man = store.manifest
        self.manifest, self.version, self.spec = man, man.version, man.model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.tokenizer = Tokenizer.from_json(store.assets["tokenizer.json"].decode())
        self.documents = json.loads(store.assets["documents.json"].decode())
        self.model = GPT(self.spec, seed=None).to(self.device, dtype)
        self.params = [{k: v.to(self.device, dtype) for k, v in p.items()} for p in store.params]
        layout = self.spec.layout()
        self.basis = [layout.flatten(b).to(self.device, dtype) for b in store.examples]
        n = len(man.example_source)
        self.coef = [c.to(self.device, dtype) for c in store.example_coef] if store.example_coef else \
            [torch.eye(n, device=self.device, dtype=dtype) for _ in store.examples]
        self.n_examples, self.n_sources = n, len(man.source_ids)
        src = torch.tensor(man.example_source, device=self.device)
        self.membership = torch.zeros(n, self.n_sources, device=self.device, dtype=dtype).index_put_(
            (torch.arange(n, device=self.device), src), torch.ones(n, device=self.device, dtype=dtype))

    @property
    def tangents_per_query(self) -> int:
        return sum(b.shape[0] for b in self.basis)

    def encode(self, text: str | None = None, prompt: str | None = None, completion: str | None = None,
               pretokenized: bool = False) -> TextQuery:
        """Tokenise a query (see ``Tokenizer.tokenize``); refuses what cannot be scored."""
        tok, ctx = self.tokenizer, self.spec.context
        if text is not None:
            words = tok.tokenize(text, pretokenized)
            n_t = len(words) - 1
        else:
            pw, cw = tok.tokenize(prompt or "", pretokenized), tok.tokenize(completion or "", pretokenized)
            if not pw or not cw:
                raise QueryError("prompt", "prompt and completion must each have at least one token")
            words, n_t = pw + cw, len(cw)
        if len(words) < 2:
            raise QueryError("text", "needs at least 2 tokens (one target after one token of context)")
        if len(words) > ctx + 1:
            raise QueryError("text", f"{len(words)} tokens: more than the model's context of {ctx} + 1")
        ids = tok.encode(words)
        return TextQuery(ids, n_t, sum(i == 0 for i in ids))

    def batch(self, queries: list[TextQuery], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``x (Q, T+1)`` and the target mask ``(Q, T)`` (padding
        and prompt targets 0); causal attention keeps rows independent.
        ``length``: pad to this many tokens instead of the longest query's."""
        x, mask = pad_right([q.ids for q in queries], length=length)
        for i, q in enumerate(queries):
            first = len(q.ids) - 1 - q.n_targets
            mask[i, :first] = False
        return x.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def score(self, queries: list[TextQuery], length: int | None = None) -> TextScores:
        """Score a batch, padded to ``length`` tokens (default: the longest)."""
        x, mask = self.batch(queries, length)
        ex = torch.zeros(len(queries), self.n_examples, device=self.device, dtype=self.dtype)
        f = torch.zeros(len(queries), device=self.device, dtype=self.dtype)
        tok = torch.zeros(mask.shape, device=self.device, dtype=self.dtype)
        for params, B, C in zip(self.params, self.basis, self.coef, strict=True):
            ex += jvp_scores(self.model, params, B, x, mask) @ C.T
            f += sequence_logprob(self.model, x, params, mask)
            tok += token_logprobs(self.model, x, params)
        E = len(self.params)
        ex, f, tok = ex / E, f / E, tok / E
        toks = [tok[i][mask[i]].tolist() for i in range(len(queries))]
        return TextScores(f, toks, ex, ex @ self.membership)
