"""A text answer's per-token part (``"per_token": true`` on ``POST
/v1/attributions``): each scored token's piece of the text, its characters,
log-probability and top sources, and ``spans``, runs of consecutive tokens
with the same top source merged.

The scores are ``τ_t`` (``TextAttributor.score(per_token=True)``): the
response of one token's log-probability to each source, read from the same
forward tangents as the sequence's (no extra row read); the sequence's score
``τ`` is their mean over the scored tokens, so a span's share of a source's
sequence score is ``n_tokens / n_targets`` times its mean. Credit stays the
sequence's (``service.credit``): nothing here moves money.
"""

from __future__ import annotations

import torch

from influence.attributor import top_k


def finite(tsrc: torch.Tensor) -> bool:
    return bool(torch.isfinite(tsrc).all())


def token_answer(q, tsrc: torch.Tensor, logprobs: list[float], ids: list[str], names: list[str], k: int,
                 order: str) -> tuple[list[dict], list[dict]]:
    """``q``: the encoded query (``TextQuery`` with ``target_spans`` and
    ``target_text``); ``tsrc (n_targets, S)`` its per-token source scores;
    ``logprobs`` its ``n_targets`` token log-probabilities -> (per-token
    entries, spans). Ties of the top source follow ``top_k``'s order."""
    vals, idx = top_k(tsrc, k, order)
    vals, idx = vals.tolist(), idx.tolist()
    text, spans = q.target_text, q.target_spans
    tokens = []
    for (a, b), lp, vs, ix in zip(spans, logprobs, vals, idx, strict=True):
        tokens.append({"piece": text[a:b], "start_char": a, "end_char": b, "logprob": lp,
                       "sources": [{"id": ids[i], "name": names[i], "score": v} for v, i in zip(vs, ix, strict=True)]})
    runs: list[dict] = []
    for t, ix, vs in zip(tokens, idx, vals, strict=True):
        if runs and runs[-1]["source"] == ids[ix[0]]:
            r = runs[-1]
            r["end_char"], r["n_tokens"], r["score"] = t["end_char"], r["n_tokens"] + 1, r["score"] + vs[0]
        else:
            runs.append({"start_char": t["start_char"], "end_char": t["end_char"], "source": ids[ix[0]],
                         "name": names[ix[0]], "score": vs[0], "n_tokens": 1})
    for r in runs:
        r["score"] /= r["n_tokens"]  # (a sum of finite float32 scores, in float64: finite)
    return tokens, runs
