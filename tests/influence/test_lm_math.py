"""``influence.text.lm_math`` against explicit references on a tiny float64
GPT (p = 1,136): block/document gradients, the Gauss-Newton and Hessian
products, forward-only readout, batch invariance, and the closed-form
simulation solved through the GPT's Gauss-Newton matrix."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, hessian, jacrev

from influence.gpt.model import GPTSpec
from influence.mlp.model import ParamLayout
from influence.simulate.spectral import LowRankFilter, nystrom
from influence.text.causal import lm_loss, pad_right, token_logprobs
from influence.text.lm_math import (
    LMGaussNewton,
    block_grads,
    difference_scores,
    doc_grads,
    gradient_scores,
    hvp_lm,
    jvp_scores,
    query_grads,
)

SPEC = GPTSpec(vocab=23, d=8, layers=1, heads=2, context=8)
N_BLOCKS = 6


@pytest.fixture(scope="module")
def setup():
    """Model, perturbed float64 params (peaked softmax: non-trivial curvature),
    random blocks ``(6, 9)`` and the explicit Gauss-Newton matrix."""
    model = SPEC.build(seed=3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    params = {k: v.detach() + 0.3 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
              for k, v in model.named_parameters()}
    blocks = torch.randint(0, SPEC.vocab, (N_BLOCKS, SPEC.context + 1), generator=gen)
    layout = ParamLayout.of(params)
    theta = layout.flatten(params)

    def logits(flat):
        return functional_call(model, layout.unflatten(flat), (blocks[:, :-1],))

    J = jacrev(logits)(theta)  # (N, T, V, p)
    p = torch.softmax(logits(theta), dim=-1)  # (N, T, V)
    H = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]  # (N, T, V, V)
    G = torch.einsum("ntvp,ntvw,ntwq->pq", J, H, J) / (N_BLOCKS * SPEC.context)
    return model, params, blocks, layout, G


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- curvature -------------------------------------------------------------------------
def test_gauss_newton_matches_explicit_and_is_symmetric_psd(setup):
    model, params, blocks, layout, G = setup
    p = layout.numel
    U = _rand((5, p), 1)
    for chunk in (1, 4, N_BLOCKS):  # chunking over blocks changes nothing
        got = LMGaussNewton(model, params, blocks, chunk=chunk, dir_chunk=2)(U)
        torch.testing.assert_close(got, U @ G, rtol=0, atol=1e-10)
    Gop = LMGaussNewton(model, params, blocks, chunk=4)(torch.eye(p, dtype=torch.float64))
    torch.testing.assert_close(Gop, G, rtol=0, atol=1e-10)
    torch.testing.assert_close(Gop, Gop.T, rtol=0, atol=1e-12)
    assert torch.linalg.eigvalsh((Gop + Gop.T) / 2).min() >= -1e-12
    assert torch.linalg.matrix_norm(G, ord=2) > 1e-2  # not a trivial matrix


def test_hvp_matches_double_backward_hessian(setup):
    """Reference: plain autograd (reverse over reverse), independent of torch.func.
    (Not ``torch.func.hessian``: in torch 2.13 it is wrong wherever a LayerNorm's
    input depends on the parameters too: here the rows of the LayerNorm weights;
    see ``test_torch_func_hessian_layernorm_caveat``.)"""
    model, params, blocks, layout, G = setup
    theta = layout.flatten(params).clone().requires_grad_(True)
    g = torch.autograd.grad(lm_loss(model, blocks, layout.unflatten(theta)), theta, create_graph=True)[0]
    U = _rand((4, layout.numel), 2)
    want = torch.stack([torch.autograd.grad(g @ u, theta, retain_graph=True)[0] for u in U])
    torch.testing.assert_close(hvp_lm(model, params, blocks)(U), want, rtol=0, atol=1e-10)
    assert (want - U @ G).abs().max() > 1e-4  # the Gauss-Newton matrix is not the Hessian here


def test_torch_func_hessian_layernorm_caveat():
    """Documents the torch.func bug the test above avoids; if this starts to
    fail, torch fixed it and ``torch.func.hessian`` can be the reference."""
    gen = torch.Generator().manual_seed(0)
    x, c, w = (torch.randn(s, generator=gen, dtype=torch.float64) for s in ((5, 4), (5, 4), (4,)))

    def f(w):
        return (torch.tanh(torch.nn.functional.layer_norm(x * w.sum(), (4,), w, None, 1e-5)) * c).sum()

    assert (hessian(f)(w) - torch.autograd.functional.hessian(f, w)).abs().max() > 1e-3


# -- training gradients ----------------------------------------------------------------
def test_block_and_doc_grads_match_autograd(setup):
    model, params, blocks, layout, _ = setup
    rows = []
    for b in blocks:
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = lm_loss(model, b[None], p) * SPEC.context  # summed over the block's targets
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(p.values()))]))
    ref = torch.stack(rows)
    torch.testing.assert_close(block_grads(model, params, blocks, chunk=4), ref, rtol=0, atol=1e-12)
    owner = torch.tensor([2, 0, 2, 2, 0, 3])
    got = doc_grads(model, params, blocks, owner, n_docs=5, chunk=4)
    want = torch.zeros(5, layout.numel, dtype=torch.float64).index_add_(0, owner, ref)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[2], ref[0] + ref[2] + ref[3], rtol=0, atol=1e-12)
    assert got[1].abs().max() == 0 and got[4].abs().max() == 0


# -- readout ---------------------------------------------------------------------------
def _queries():
    """Right-padded mixed-length batch, with prompt/completion masks."""
    gen = torch.Generator().manual_seed(5)
    lengths = [9, 4, 7, 2]
    seqs = [torch.randint(0, SPEC.vocab, (n,), generator=gen).tolist() for n in lengths]
    x, pad_mask = pad_right(seqs)
    prompt = [3, 1, 0, 1]  # the first `prompt` targets of each query are prompt-only (query 3: all)
    comp = pad_mask.clone()
    for i, k in enumerate(prompt):
        comp[i, :k] = False
    return seqs, x, pad_mask, comp


def test_scores_agree_three_ways(setup):
    model, params, _, layout, _ = setup
    _, x, _, comp = _queries()
    U = _rand((7, layout.numel), 3)
    U = U / U.norm(dim=1, keepdim=True)  # unit responses: h is the step in parameter space
    for mask in (None, comp):
        ref = gradient_scores(model, params, U, x, mask)
        assert ref.shape == (x.shape[0], 7)
        torch.testing.assert_close(jvp_scores(model, params, U, x, mask, chunk=3), ref, rtol=0, atol=1e-10)
        plain = jvp_scores(model, params, U, x, mask, chunk=3, head=False)  # jvp through the logits
        torch.testing.assert_close(plain, ref, rtol=0, atol=1e-10)
        diff = difference_scores(model, params, U, x, mask, h=1e-4)
        assert ((diff - ref).abs().max() / ref.abs().max()) < 1e-6


def test_query_grads_match_per_query_autograd(setup):
    model, params, _, layout, _ = setup
    seqs, x, _, comp = _queries()
    g = query_grads(model, params, x, comp, chunk=3)
    for i, s in enumerate(seqs):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        xi, mi = torch.tensor(s)[None], comp[i, : len(s) - 1]
        lp = token_logprobs(model, xi, p)[0]
        f = (lp * mi).sum() / mi.sum().clamp_min(1)
        if not mi.any():
            assert g[i].abs().max() == 0
            continue
        want = torch.cat([t.reshape(-1) for t in torch.autograd.grad(f, list(p.values()))])
        torch.testing.assert_close(g[i], want, rtol=0, atol=1e-12)


def test_batched_scores_equal_one_query_at_a_time(setup):
    model, params, _, layout, _ = setup
    seqs, x, pad_mask, comp = _queries()
    U = _rand((5, layout.numel), 4)
    for mask, head in ((pad_mask, True), (comp, True), (comp, False)):
        batched = jvp_scores(model, params, U, x, mask, head=head)
        for i, s in enumerate(seqs):
            xi, mi = torch.tensor(s)[None], mask[i : i + 1, : len(s) - 1]
            alone = jvp_scores(model, params, U, xi, mi, head=head)
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-10)
    # a full-length query without a mask is the same as with an all-ones mask
    full = jvp_scores(model, params, U, x[:1])
    torch.testing.assert_close(full, jvp_scores(model, params, U, x, pad_mask)[:1], rtol=0, atol=1e-12)


def test_masks_and_padding_are_honoured(setup):
    model, params, _, layout, _ = setup
    seqs, x, pad_mask, comp = _queries()
    U = _rand((3, layout.numel), 6)
    U = U / U.norm(dim=1, keepdim=True)
    base = jvp_scores(model, params, U, x, comp)
    # the padding tokens' values change nothing
    x2 = x.clone()
    x2[~torch.cat([pad_mask[:, :1], pad_mask], dim=1)] = 17
    torch.testing.assert_close(jvp_scores(model, params, U, x2, comp), base, rtol=0, atol=1e-12)
    # another query's mask changes nothing for query 0
    other = comp.clone()
    other[2, :3] = False
    torch.testing.assert_close(jvp_scores(model, params, U, x, other)[[0, 1, 3]], base[[0, 1, 3]],
                               rtol=0, atol=1e-12)
    # the prompt targets are excluded: query 0 counts only its completion targets 3..7
    lp = lambda p: token_logprobs(model, x[:1], p)[0, 3:8].mean()  # noqa: E731
    h = 1e-5
    for r in range(3):
        u = layout.unflatten(U[r])
        d = (lp({k: params[k] + h * u[k] for k in params}) - lp({k: params[k] - h * u[k] for k in params})) / (2 * h)
        assert abs(float(d) - float(base[0, r])) < 1e-7 * max(1.0, abs(float(d)))
    # ... and the mask is not a no-op: all targets give different scores
    assert (jvp_scores(model, params, U, x, pad_mask)[0] - base[0]).abs().max() > 1e-6
    # an all-masked row (no completion) scores 0
    assert base[3].abs().max() == 0


# -- the simulation through the GPT's curvature -----------------------------------------
def test_closed_form_filter_matches_explicit_solve_and_steps(setup):
    model, params, blocks, layout, G = setup
    p = layout.numel
    product = LMGaussNewton(model, params, blocks, chunk=N_BLOCKS)
    basis = nystrom(product, p, rank=p, power=0, gen=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert basis.exact
    g = block_grads(model, params, blocks) / SPEC.context  # mean-loss gradients, (6, p)
    shift = 0.05
    want = -torch.linalg.solve(G + shift * torch.eye(p, dtype=torch.float64), g.T).T
    got = LowRankFilter(basis, shift=shift, eta=1.0, steps=None)(g)
    assert (got - want).norm() / want.norm() < 1e-8
    eta = 1.0 / (float(torch.linalg.eigvalsh(G).max()) + shift)
    K = 40
    u = torch.zeros_like(g)
    for _ in range(K):
        u = u - eta * (u @ G + shift * u + g)
    got_k = LowRankFilter(basis, shift=shift, eta=eta, steps=K)(g)
    assert (got_k - u).norm() / u.norm() < 1e-8
