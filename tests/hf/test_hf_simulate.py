"""The simulation in a LoRA subspace (``lm_simulate.simulate_documents``
through ``HFCausalLM``) against the explicit damped inverse, on a tiny GPT-2
small enough for an explicit Gauss-Newton matrix (float64): the K-step
responses approach ``−(G + λI)⁻¹ g_d`` as K grows, and ``LMGaussNewton``
equals ``Jᵀ H J`` built from the full Jacobian."""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev

from influence.layout import ParamLayout
from influence.simulate.settings import MethodConfig
from influence.text.lm_math import LMGaussNewton, doc_grads
from influence.text.lm_simulate import simulate_documents

from .conftest import V, tiny

N_BLOCKS, T = 6, 10


def _setup():
    model, params = tiny("gpt2", r=1)
    gen = torch.Generator().manual_seed(3)
    blocks = torch.randint(1, V, (N_BLOCKS, T + 1), generator=gen)
    block_doc = torch.tensor([0, 0, 1, 2, 2, 2])
    layout = ParamLayout.of(params)
    theta = layout.flatten(params)

    def logits(flat):
        return functional_call(model, layout.unflatten(flat), (blocks[:, :-1],))

    J = jacrev(logits)(theta)  # (N, T, V, p)
    p = torch.softmax(logits(theta), dim=-1)
    H = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]
    G = torch.einsum("ntvp,ntvw,ntwq->pq", J, H, J) / (N_BLOCKS * T)
    return model, params, blocks, block_doc, layout, G


def test_lora_gauss_newton_and_convergence_to_the_damped_inverse():
    model, params, blocks, block_doc, layout, G = _setup()
    p = layout.numel
    assert p < 600  # an explicit matrix
    eye = torch.eye(p, dtype=torch.float64)
    assert torch.allclose(LMGaussNewton(model, params, blocks)(eye), G, rtol=1e-9, atol=1e-12)
    lam = 0.05
    g = doc_grads(model, params, blocks, block_doc, 3)
    want = -torch.linalg.solve(G + lam * eye, g.T).T
    errs = []
    for K in (20, 200, 5000):
        cfg = MethodConfig(rank=p, power=0, steps=K, eta=0.0, damping=lam, curvature_subset=0)
        U = simulate_documents(model, params, blocks, block_doc, 3, cfg, 0.0, seed=0).U
        errs.append(float((U - want).norm() / want.norm()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-6


def test_fisher_curvature_at_full_rank_is_the_exact_damped_fisher_filter(family):
    """method.curvature='fisher' with rank >= blocks: the one-pass sketch in the gradient pass gives the
    eigenbasis of F = Σ_b g_b g_bᵀ / N_tok exactly, so u_d = −φ_K(F + sI) g_d equals the explicit matrix
    route (float64); the documents' gradients are those of doc_grads."""
    from influence.simulate.spectral import horizon_filter
    from influence.text.lm_math import block_grads

    model, params = tiny(family)
    gen = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, V, (6, 9), generator=gen)
    blocks[4, 6:] = -100  # a padded block counts its real targets only
    block_doc = torch.tensor([0, 0, 1, 2, 2, 2])
    cfg = MethodConfig(curvature="fisher", rank=64, damping=0.05, steps=40, eta=0.0)
    U = simulate_documents(model, params, blocks, block_doc, 3, cfg, 0.0, seed=0).U
    B = block_grads(model, params, blocks)
    n_tok = int((blocks[:, 1:] != -100).sum())
    F = B.T @ B / n_tok
    h, Vec = torch.linalg.eigh(F)
    eta = 1.0 / (float(h.max()) + 0.05)
    phi = horizon_filter(h, 0.05, eta, 40)
    G = doc_grads(model, params, blocks, block_doc, 3)
    want = -(G @ Vec) * phi @ Vec.T
    # to 1e-7 of the largest entry: the Nyström's SVD goes through a Gram matrix (squares the condition)
    torch.testing.assert_close(U, want, rtol=1e-5, atol=1e-7 * float(want.abs().max()))
