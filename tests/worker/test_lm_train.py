"""The language-model training recipe (docs/lm-protocol.md)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from influence.gpt.model import GPTSpec
from influence.gpt.train import LR_MAX, batch_order, lr_at, n_steps, perplexity, train_lm


def test_lr_schedule():
    S = 1800
    W = 90  # round(0.05 * 1800)
    assert lr_at(0, S) == pytest.approx(LR_MAX / W)
    assert lr_at(W - 1, S) == pytest.approx(LR_MAX)
    assert lr_at(W, S) == pytest.approx(LR_MAX)
    t = 1000
    assert lr_at(t, S) == pytest.approx(LR_MAX * 0.5 * (1 + math.cos(math.pi * (t - W) / (S - W))))
    assert lr_at(S - 1, S) == pytest.approx(LR_MAX * 0.5 * (1 + math.cos(math.pi * (S - 1 - W) / (S - W))))
    assert lr_at(0, 8) == pytest.approx(LR_MAX)  # W = max(1, round(0.4)) = 1
    assert n_steps(1800) == 1800 and n_steps(900) == 904 and n_steps(7) == 8


def test_batch_order_subset_is_full_order_filtered():
    full = batch_order(None, seed=3)
    assert len(full) == 1800 and all(len(b) == 8 for b in full)
    rng = np.random.default_rng(3)
    assert np.array_equal(np.concatenate(full[:225]), rng.permutation(1800))
    keep = np.random.default_rng(0).choice(1800, size=901, replace=False)
    sub = batch_order(keep, seed=3)
    assert len(sub) == n_steps(901) and [len(b) for b in sub[:114]] == [8] * 112 + [5, 8]  # 113 a epoch
    kept = set(keep.tolist())
    for e in range(8):
        f = np.concatenate(full[225 * e : 225 * (e + 1)])
        s = np.concatenate(sub[113 * e : 113 * (e + 1)])
        assert s.tolist() == [i for i in f.tolist() if i in kept]


def test_tiny_training_learns_and_is_deterministic():
    spec = GPTSpec(vocab=30, d=16, layers=1, heads=2, context=16)
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 30, (1, 17), generator=g)
    blocks = (base + torch.arange(400).unsqueeze(1) % 3) % 30  # 400 blocks, 3 patterns: learnable
    keep = np.arange(0, 400, 2)
    p1, s1 = train_lm(spec, blocks, keep, seed=5, threads=1)
    p2, s2 = train_lm(spec, blocks, keep, seed=5, threads=1)
    assert s1["steps"] == 8 * 25 and s1["n_blocks"] == 200
    assert all(torch.equal(p1[k], p2[k]) for k in p1) and np.array_equal(s1["losses"], s2["losses"])
    assert s1["losses"][-3:].mean() < s1["losses"][:3].mean() - 0.5
    assert perplexity(spec, p1, blocks) < math.exp(s1["losses"][0])
    p3, _ = train_lm(spec, blocks[:16], None, seed=6, threads=1)
    assert not torch.equal(p1["tok_emb.weight"], p3["tok_emb.weight"])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FA_SLOW"), reason="full-data run (~50 s): set FA_SLOW=1")
def test_full_brown_run_perplexity():
    from influence.datasets.brown import brown_corpus
    from influence.text.corpus import all_windows

    c = brown_corpus()
    params, st = train_lm(GPTSpec(), c.blocks, None, seed=2, threads=1)
    ppl = perplexity(GPTSpec(), params, all_windows(c.heldout_tokens, max_tokens=260))
    assert st["steps"] == 1800 and 65 < ppl < 77  # protocol: about 71
