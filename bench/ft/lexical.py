"""Model-free baselines of the ``brown-ft`` benchmark: BM25 and idf-weighted
word overlap between a query window and each training document's opening
(the text fine-tuned on). Both are ``τ (m, n) ≥ 0``: a document sharing the
query's (rare) words is predicted to raise f(q).

Words are the corpus tokens (lowercased words and punctuation, as
lm-protocol tokenises; a query window and an opening are those tokens
joined with single spaces, so ``str.split`` recovers them).

- ``overlap``: ``Σ_{w ∈ set(q) ∩ set(d)} log(n / df(w))``, ``df`` over the
  ``n`` openings (lm-protocol's lexical baseline, on words instead of ids);
- ``bm25`` (Okapi, Lucene's idf): ``Σ_{w ∈ q} idf(w) · tf(w,d)(k1+1) /
  (tf(w,d) + k1(1 − b + b |d| / avgdl))`` with ``idf(w) = log(1 + (n − df +
  0.5) / (df + 0.5))``, the sum over the query's tokens *with* repetition (as
  ``rank_bm25``'s ``get_scores``), ``k1 = 1.2``, ``b = 0.75`` (every opening
  has 260 tokens, so ``b`` does not matter here).
"""

from __future__ import annotations

import numpy as np


def _vocab(docs: list[list[str]]) -> dict[str, int]:
    v: dict[str, int] = {}
    for d in docs:
        for w in d:
            v.setdefault(w, len(v))
    return v


def _counts(rows: list[list[str]], vocab: dict[str, int]) -> np.ndarray:
    """``(len(rows), |V|)`` term counts (words outside ``vocab`` dropped)."""
    out = np.zeros((len(rows), len(vocab)))
    for i, r in enumerate(rows):
        for w in r:
            j = vocab.get(w)
            if j is not None:
                out[i, j] += 1
    return out


def overlap(queries: list[list[str]], docs: list[list[str]]) -> np.ndarray:
    vocab = _vocab(docs)
    d = _counts(docs, vocab) > 0
    idf = np.log(len(docs) / d.sum(0))
    q = (_counts(queries, vocab) > 0).astype(np.float64)
    return (q * idf) @ d.T.astype(np.float64)


def bm25(queries: list[list[str]], docs: list[list[str]], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    vocab = _vocab(docs)
    tf = _counts(docs, vocab)
    n = len(docs)
    df = (tf > 0).sum(0)
    idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
    length = tf.sum(1, keepdims=True)
    sat = tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / length.mean()))  # (n, |V|)
    return (_counts(queries, vocab) * idf) @ sat.T
