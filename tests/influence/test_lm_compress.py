"""Compression of per-document responses: exact at full rank, source sums
exact when the sources fit in the basis, and the probe-steered basis is the
best one for the probe queries' scores."""

from __future__ import annotations

import torch

from influence.text.lm_simulate import compress, score_agreement


def _problem(n=20, p=50, S=3, m=30):
    g = torch.Generator().manual_seed(0)
    U = torch.randn(n, p, generator=g, dtype=torch.float64)
    src = torch.arange(n) % S
    Q = torch.randn(m, 5, generator=g, dtype=torch.float64) @ torch.randn(5, p, generator=g, dtype=torch.float64)
    A = torch.zeros(S, n, dtype=torch.float64).index_put_((src, torch.arange(n)), torch.ones(n, dtype=torch.float64))
    return U, src, Q, A


def test_full_rank_is_exact():
    U, src, Q, _ = _problem()
    B, C, st = compress(U, src, 3, rank=20, probe=Q)
    torch.testing.assert_close(C @ B, U, rtol=1e-10, atol=1e-10)
    assert st.rel_error_documents < 1e-12


def test_source_sums_are_exact_in_a_small_basis():
    U, src, Q, A = _problem()
    B, C, st = compress(U, src, 3, rank=8, probe=Q)
    assert st.exact_sources and B.shape == (8, 50) and C.shape == (20, 8)
    torch.testing.assert_close(A @ C @ B, A @ U, rtol=1e-10, atol=1e-10)
    assert st.rel_error_documents > 0.1  # the documents themselves are truncated


def test_probe_steered_basis_beats_the_plain_one_on_probe_scores():
    U, src, Q, _ = _problem()
    _, _, steered = compress(U, src, 3, rank=8, probe=Q)
    Bp, Cp, _ = compress(U, src, 3, rank=8)
    plain = ((Q @ U.T - Q @ (Cp @ Bp).T).norm() / (Q @ U.T).norm()).item()
    assert steered.rel_error_probe_scores < plain
    # Q has rank 5: three source columns and five probe directions cover every score it can see
    assert steered.rel_error_probe_scores < 1e-10


def test_score_agreement():
    x = torch.randn(4, 10, dtype=torch.float64)
    assert score_agreement(x, x)["spearman"] == 1.0 and score_agreement(x, x)["rel_error"] == 0.0
    assert abs(score_agreement(x, -x)["spearman"] + 1.0) < 1e-12


def test_a_basis_wider_than_the_probes_see_is_completed_by_u_itself():
    """Q has rank 5, so 3 source columns + 5 probe directions are all the
    probes can steer; the other 4 of a rank-12 basis must be the best for U
    (reference: explicit SVD of U with those 8 directions projected out)."""
    U, src, Q, _ = _problem()
    B, C, st = compress(U, src, 3, rank=12, probe=Q)
    assert B.shape == (12, 50)
    torch.testing.assert_close(C.T @ C, torch.eye(12, dtype=torch.float64), rtol=0, atol=1e-10)
    assert st.rel_error_probe_scores < 1e-10
    B8, C8, first8 = compress(U, src, 3, rank=8, probe=Q)
    Z = U - C8 @ B8
    s = torch.linalg.svdvals(Z)
    best = (s[4:].square().sum().sqrt() / U.norm()).item()
    assert abs(st.rel_error_documents - best) < 1e-10
    assert st.rel_error_documents < first8.rel_error_documents
