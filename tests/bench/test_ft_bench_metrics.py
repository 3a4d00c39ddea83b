"""The brown-ft benchmark's metric code against slow, obviously correct references:
BM25 and idf-weighted overlap (``bench.ft.lexical``) and the document / genre /
centred-genre LDS (``bench.harness.metrics.lds`` as ``bench.ft.quality`` uses it)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr

from bench.ft.lexical import bm25, overlap
from bench.harness.metrics import lds, lds_per_query, to_sources


def _texts(rng, n, length, vocab=30):
    return [[f"w{int(rng.zipf(1.5)) % vocab}" for _ in range(length)] for _ in range(n)]


def _bm25_slow(q, docs, k1=1.2, b=0.75):
    n = len(docs)
    avg = sum(len(d) for d in docs) / n
    out = []
    for d in docs:
        s = 0.0
        for w in q:  # with repetition
            df = sum(w in dd for dd in docs)
            if df == 0:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            tf = d.count(w)
            s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avg))
        out.append(s)
    return out


def _overlap_slow(q, docs):
    n = len(docs)
    out = []
    for d in docs:
        s = 0.0
        for w in set(q) & set(d):
            s += math.log(n / sum(w in dd for dd in docs))
        out.append(s)
    return out


def test_lexical_matches_reference():
    rng = np.random.default_rng(0)
    docs = [d[: rng.integers(5, 40)] for d in _texts(rng, 12, 40)]  # different lengths: b matters
    qs = _texts(rng, 5, 15, vocab=40)  # some query words in no document
    np.testing.assert_allclose(bm25(qs, docs), [_bm25_slow(q, docs) for q in qs], rtol=1e-12)
    np.testing.assert_allclose(bm25(qs, docs, k1=2.0, b=0.3), [_bm25_slow(q, docs, 2.0, 0.3) for q in qs],
                               rtol=1e-12)
    np.testing.assert_allclose(overlap(qs, docs), [_overlap_slow(q, docs) for q in qs], rtol=1e-12, atol=1e-12)


def test_lds_levels_match_reference():
    rng = np.random.default_rng(1)
    m, n, S, J = 7, 20, 4, 9
    tau = rng.normal(size=(m, n))
    src = rng.integers(0, S, n)
    subsets = np.stack([np.sort(rng.choice(n, 10, replace=False)) for _ in range(J)])
    tgt = rng.normal(size=(J, m)) + 0.3 * np.stack([tau[:, s].sum(1) for s in subsets])
    ref = [spearmanr([tau[q, s].sum() for s in subsets], tgt[:, q])[0] for q in range(m)]
    np.testing.assert_allclose(lds_per_query(tau, subsets, tgt), ref, rtol=1e-12)
    # genre level: a subset is a set of sources; its prediction the sum over their documents
    masks = rng.random((J, S)) < 0.5
    gt = rng.normal(size=(J, m))
    pred = np.array([[tau[q, np.isin(src, np.flatnonzero(mk))].sum() for q in range(m)] for mk in masks])
    ts = to_sources(tau, src, S)
    ref = np.mean([spearmanr(pred[:, q], gt[:, q])[0] for q in range(m)])
    assert abs(lds(ts, masks, gt) - ref) < 1e-12
    # centred: each subset's mean over the queries taken out of predictions and targets first
    pc, tc = pred - pred.mean(1, keepdims=True), gt - gt.mean(1, keepdims=True)
    ref = np.mean([spearmanr(pc[:, q], tc[:, q])[0] for q in range(m)])
    assert abs(lds(ts, masks, gt, centred=True) - ref) < 1e-12
