"""Readout in fixed-shape blocks, and the probe that it is batch invariant.

A GEMM's row results can depend on how many rows it has (BLAS picks other
kernels for skinny shapes; cuBLAS picks by shape), so a service that
batches concurrent queries would answer a query differently depending on
its company. Reading out in blocks of exactly ``block`` rows (the last one
padded) makes every call the same shape; ``batch_invariant`` /
``text_batch_invariant`` check on a given host that a row's numbers also do
not depend on its position in the block (run once per store load; the
service reports it on ``/readyz``). Vector stores pad rows with zeros; text
stores pad every query to the full context with a mask and fill the last
block with filler rows.
"""

from __future__ import annotations

import torch

from .mlp.attributor import VectorAttributor
from .text.attributor import TextAttributor, TextQuery

_PROBE_EXAMPLE_ROWS = 2_000_000  # batch_invariant: (query rows x example responses) probed at most


def readout_rows(att: VectorAttributor, x: torch.Tensor, y: torch.Tensor, kind: str, examples: bool,
                 block: int) -> tuple[torch.Tensor, ...]:
    """Score rows ``x (B, d)`` in padded blocks of ``block`` rows; ``y = -1``
    scores the predicted class. Returns CPU (probs, pred, target, sources,
    examples or None)."""
    n, pad = x.shape[0], (-x.shape[0]) % block
    xs = torch.cat([x, x.new_zeros((pad, x.shape[1]))]) if pad else x
    ys = torch.cat([y, y.new_full((pad,), -1)]) if pad else y
    parts = []
    for s in range(0, xs.shape[0], block):
        sc = att.readout(xs[s:s + block], ys[s:s + block], kind, examples=examples, sources=True)
        parts.append((sc.probs, sc.pred, sc.target, sc.sources, sc.examples))
    out = [torch.cat([p[i] for p in parts])[:n].cpu() if parts[0][i] is not None else None for i in range(5)]
    return tuple(out)


def batch_invariant(att: VectorAttributor, block: int, kind: str = "margin", stop=None) -> bool | None:
    """Whether a row's answer is the same at every position of a block (the
    premise of the padded blocks above; BLAS kernels for some skinny shapes
    break it). A probe of ``block`` random rows, read out rolled to every
    offset: ``block`` readouts, once per store load. The per-example
    responses join the probe while that stays cheap (``block²`` query rows
    over all of them: well under a second for the digits store, minutes for
    a million examples on a CPU); beyond that only the sources are probed."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(block, att.spec.in_dim, generator=gen)
    y = torch.randint(-1, att.spec.n_classes, (block,), generator=gen)
    examples = att.rows is not None and len(att.manifest.example_source) * block * block <= _PROBE_EXAMPLE_ROWS
    base = readout_rows(att, x, y, kind, examples, block)
    for shift in range(1, block):
        if stop is not None and stop():  # asked to stop between readouts (a process shutting down): unknown
            return None
        rolled = readout_rows(att, x.roll(shift, 0), y.roll(shift, 0), kind, examples, block)
        if not all(a is None or torch.equal(a.roll(shift, 0), b) for a, b in zip(base, rolled, strict=True)):
            return False
    return True


def length_buckets(context: int) -> list[int]:
    """Padded lengths of text readout rows: 17, 33, 65, ... (2^k + 1 tokens, at
    least 17) up to the model's context + 1, which is always the last."""
    out, n = [], 16
    while n < context:
        out.append(n + 1)
        n *= 2
    return [*out, context + 1]


def by_bucket(queries: list[TextQuery], context: int) -> dict[int, list[int]]:
    """Positions of ``queries`` by the smallest of ``length_buckets(context)``
    that holds each (a query's readout row is padded to it), shortest first."""
    buckets = length_buckets(context)
    out: dict[int, list[int]] = {}
    for i, q in enumerate(queries):
        out.setdefault(next(b for b in buckets if b >= len(q.ids)), []).append(i)
    return dict(sorted(out.items()))


def text_readout_rows(att: TextAttributor, queries: list[TextQuery], block: int, examples: bool = True,
                      per_token: bool = False):
    """Score ``queries`` in calls of exactly ``block`` rows, each row right-padded
    (with masks) to the smallest of ``length_buckets`` that holds it and the
    rows of one call all of that length (the last call of a length filled up
    with filler rows). A call's shape thus depends on nothing but its bucket,
    and causal attention keeps rows independent, so a query's numbers do not
    depend on what it is batched with; short queries do not pay for a full
    context (a 129-token context costs a 15-token query 8x more than its
    bucket of 17). -> CPU (logprob, token log-probabilities, sources, examples
    or None: ``examples`` False on a store with per-source rows), in order;
    ``per_token``: and a fifth, per query its target tokens' source scores
    ``(n_targets, S)`` (``TextAttributor.score(per_token=True)``: the other
    four are the same numbers with it on or off)."""
    lp, src = [None] * len(queries), [None] * len(queries)
    toks, ex, tsrc = [None] * len(queries), [None] * len(queries), [None] * len(queries)
    for length, idx in by_bucket(queries, att.spec.context).items():
        fill = TextQuery([0] * length, 1, 0)
        for s in range(0, len(idx), block):
            part = idx[s:s + block]
            sc = att.score([queries[i] for i in part] + [fill] * (block - len(part)), length, examples,
                           per_token=per_token)
            for j, i in enumerate(part):
                lp[i], src[i], toks[i] = sc.logprob[j], sc.sources[j], sc.token_logprobs[j]
                ex[i] = None if sc.examples is None else sc.examples[j]
                if per_token:
                    tsrc[i] = sc.token_sources[j].cpu()
    exs = None if ex[0] is None else torch.stack(ex).cpu()
    out = torch.stack(lp).cpu(), toks, torch.stack(src).cpu(), exs
    return (*out, tsrc) if per_token else out


def text_batch_invariant(att: TextAttributor, block: int, stop=None) -> bool | None:
    """``batch_invariant`` for a text store: ``block`` random queries of
    random lengths, read out rolled to every offset of the block. ``stop()``
    true between two readouts ends it with None (unknown)."""
    gen = torch.Generator().manual_seed(0)
    ctx, vocab = att.spec.context, att.spec.vocab
    qs = []
    for _ in range(block):
        n = int(torch.randint(2, ctx + 2, (1,), generator=gen))
        ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
        qs.append(TextQuery(ids, int(torch.randint(1, n, (1,), generator=gen)), sum(i == 0 for i in ids)))
    base = text_readout_rows(att, qs, block)
    if att.source_rows is not None:  # a sources-only read must give the very same source scores
        alone = text_readout_rows(att, qs, block, examples=False)
        if not (torch.equal(alone[0], base[0]) and torch.equal(alone[2], base[2])):
            return False
    for shift in range(1, block):
        if stop is not None and stop():
            return None
        rolled = text_readout_rows(att, qs[-shift:] + qs[:-shift], block)
        lp, toks, src, ex = rolled
        if not (torch.equal(base[0].roll(shift, 0), lp) and base[1][-shift:] + base[1][:-shift] == toks
                and torch.equal(base[2].roll(shift, 0), src) and torch.equal(base[3].roll(shift, 0), ex)):
            return False
    return True
