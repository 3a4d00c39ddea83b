"""Fast checks of the language-model baselines (``bench/lm/baselines.py``) and the shared LDS and TRAK
code (``bench/harness/metrics.py``, ``trak.py``) on a tiny GPT and tiny synthetic documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bench.harness.metrics import lds, lds_per_query, subsets_to_mask, to_sources
from bench.harness.trak import projector, trak_features, trak_scores
from bench.lm.baselines import (
    LMModelOutput,
    doc_block_tensor,
    doc_gradients,
    grad_dot,
    idf,
    lexical_overlap,
    query_gradients,
)
from influence.gpt.model import GPTSpec
from influence.text.causal import sequence_logprob

SPEC = GPTSpec(vocab=50, d=16, layers=1, heads=2, context=16)
T1 = SPEC.context + 1


def _data(n_docs=6, nb=2, m=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, SPEC.vocab, (n_docs * nb, T1), generator=g)
    owner = torch.arange(n_docs).repeat_interleave(nb)
    qx = torch.randint(0, SPEC.vocab, (m, T1), generator=g)
    return blocks, owner, qx


def test_grad_dot_matches_explicit_autograd():
    torch.manual_seed(0)
    model = SPEC.build(3)
    blocks, owner, qx = _data()
    db = doc_block_tensor(blocks, owner, 6)
    G = doc_gradients(model, db)
    torch.testing.assert_close(doc_gradients(model, db, vectorise=True), G, rtol=1e-4, atol=1e-6)
    tau = grad_dot([query_gradients(model, qx)], [G])
    params = list(model.parameters())
    want = np.zeros((3, 6))
    for a in range(3):
        gq = torch.autograd.grad(sequence_logprob(model, qx[a : a + 1])[0], params)
        for i in range(6):
            x = blocks[owner == i]
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, SPEC.vocab), x[:, 1:].reshape(-1), reduction="sum")
            gd = torch.autograd.grad(-loss, params)  # minus the summed token loss of the doc's blocks
            want[a, i] = float(sum((u.double() * v.double()).sum() for u, v in zip(gq, gd)))
    np.testing.assert_allclose(tau, want, rtol=1e-4, atol=1e-6)


def test_doc_block_tensor_rejects_ragged():
    with pytest.raises(ValueError):
        doc_block_tensor(torch.zeros(3, T1, dtype=torch.long), torch.tensor([0, 0, 1]), 2)


def test_lexical_overlap_symmetric_and_disjoint():
    docs = [[1, 2, 3, 3], [3, 4, 5], [6, 7, 1], [8, 9, 0]]
    w = idf(docs, 12)
    assert w[0] == 0.0  # <unk> is not a word
    assert w[3] == pytest.approx(np.log(4 / 2)) and w[11] == 0.0
    a, b = [1, 2, 4, 4, 0], [2, 4, 7, 9]
    ab = lexical_overlap([a], [b], 12, weights=w)
    ba = lexical_overlap([b], [a], 12, weights=w)
    assert ab[0, 0] == pytest.approx(ba[0, 0]) == pytest.approx(w[2] + w[4])
    # disjoint vocabularies (<unk> shared is not a word) → exactly zero
    assert lexical_overlap([[1, 2, 0]], [[5, 6, 0]], 12, weights=w)[0, 0] == 0.0
    full = lexical_overlap([[1, 2, 3]], docs, 12)
    assert full.shape == (1, 4) and full[0, 3] == 0.0 and full[0, 0] > full[0, 1] > 0


def test_lds_linear_target_is_one_and_monotone_invariant():
    rng = np.random.default_rng(0)
    tau = rng.normal(size=(5, 20))
    subsets = np.array([np.sort(rng.choice(20, 10, replace=False)) for _ in range(30)])
    tgt = subsets_to_mask(subsets, 20) @ tau.T  # (J, m)
    assert lds(tau, subsets, tgt) == pytest.approx(1.0)
    assert lds(tau, subsets, np.exp(tgt)) == pytest.approx(1.0)
    assert lds(-tau, subsets, tgt) == pytest.approx(-1.0)


def test_centred_lds_removes_per_subset_constant():
    rng = np.random.default_rng(1)
    tau = rng.normal(size=(8, 15))
    mask = rng.random((25, 15)) < 0.5
    tgt = mask @ tau.T
    shift = 100.0 * rng.normal(size=(25, 1))  # a per-subset constant, the same for every query
    assert lds(tau, mask, tgt + shift, centred=True) == pytest.approx(1.0)
    assert lds(tau, mask, tgt + shift) < 0.9  # uncentred, the constant dominates the ranking
    noisy = tgt + rng.normal(size=(25, 8))
    np.testing.assert_allclose(lds_per_query(tau, mask, noisy + shift, centred=True),
                               lds_per_query(tau, mask, noisy, centred=True))


def test_to_sources_sums_documents():
    tau = np.arange(12.0).reshape(2, 6)
    out = to_sources(tau, np.array([0, 1, 0, 2, 2, 2]), 3)
    np.testing.assert_allclose(out, [[2, 1, 12], [14, 7, 30]])


def test_trak_matches_traker(tmp_path):
    trak = pytest.importorskip("trak")
    torch.manual_seed(0)
    blocks, owner, qx = _data(n_docs=12, nb=2, m=4, seed=1)
    db = doc_block_tensor(blocks, owner, 12)
    k, lam = 32, 1e-3
    members = [SPEC.build(5), SPEC.build(6)]
    phi_d, phi_q = [], []
    for e, model in enumerate(members):
        p = sum(v.numel() for v in model.parameters())
        proj = projector(p, k, member=e)
        phi_d.append(trak_features(doc_gradients(model, db, mean_targets=True), proj, e))
        phi_q.append(trak_features(query_gradients(model, qx), proj, e))
    ours = trak_scores(phi_d, phi_q, lam)

    traker = trak.TRAKer(model=SPEC.build(0), task=LMModelOutput(), train_set_size=12, save_dir=str(tmp_path),
                         device="cpu", proj_dim=k, use_half_precision=False, lambda_reg=lam, logging_level=40)
    labels = torch.zeros(12, dtype=torch.long)
    for e, model in enumerate(members):
        traker.load_checkpoint(model.state_dict(), model_id=e)
        traker.featurize(batch=(db, labels), num_samples=12)
        np.testing.assert_allclose(np.asarray(traker.saver.current_store["grads"]), phi_d[e].numpy(),
                                   rtol=1e-4, atol=1e-6)
    traker.finalize_features()
    for e, model in enumerate(members):
        traker.start_scoring_checkpoint("q", model.state_dict(), model_id=e, num_targets=4)
        traker.score(batch=(qx.unsqueeze(1), torch.zeros(4, dtype=torch.long)), num_samples=4)
    theirs = np.asarray(traker.finalize_scores("q")).T  # traker: (train, targets)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5 * np.abs(theirs).max())


def test_same_genre_indicator():
    from bench.lm.baselines import same_genre

    np.testing.assert_array_equal(same_genre(np.array([0, 2]), np.array([0, 1, 2, 0])), [[1, 0, 0, 1], [0, 0, 1, 0]])
