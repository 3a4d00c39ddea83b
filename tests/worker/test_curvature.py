"""Curvature products equal explicit matrices (float64, tiny model)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, hessian, jacrev

from influence.mlp.curvature import LinearStackGGN, ggn_generic, hvp_generic, per_example_grads
from influence.mlp.model import ParamLayout, build_mlp
from influence.outputs import cross_entropy_hessian


def explicit_ggn(spec, params, X):
    """``(1/N) Σ J_nᵀ H_n J_n`` with J from jacrev: ``(p, p)``."""
    layout, model = ParamLayout.of(params), build_mlp(spec).double()
    f = lambda th: functional_call(model, layout.unflatten(th), (X,))  # noqa: E731
    theta = layout.flatten(params)
    J = jacrev(f)(theta)  # (N, C, p)
    H = cross_entropy_hessian(f(theta))
    return torch.einsum("ncp,ncd,ndq->pq", J, H, J) / X.shape[0]


def explicit_hessian(spec, params, X, y):
    layout, model = ParamLayout.of(params), build_mlp(spec).double()
    loss = lambda th: torch.nn.functional.cross_entropy(functional_call(model, layout.unflatten(th), (X,)), y)  # noqa: E731
    return hessian(loss)(layout.flatten(params))


def test_ggn_fast_equals_generic_equals_explicit(tiny64):
    spec, params, X, _ = tiny64
    U = torch.randn(13, ParamLayout.of(params).numel, dtype=torch.float64)
    ref = U @ explicit_ggn(spec, params, X)
    fast = LinearStackGGN(params, spec, X)
    torch.testing.assert_close(fast(U), ref, rtol=1e-10, atol=1e-12)
    fast.block_elements = 2 * 13 * 7  # two examples per block: the blocked sum is exercised
    torch.testing.assert_close(fast(U), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ggn_generic(build_mlp(spec).double(), params, X)(U), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_ggn_fast_path_other_activations(tiny64, activation):
    spec, params, X, _ = tiny64
    spec = spec.model_copy(update={"activation": activation})
    U = torch.randn(5, ParamLayout.of(params).numel, dtype=torch.float64)
    ref = U @ explicit_ggn(spec, params, X)
    torch.testing.assert_close(LinearStackGGN(params, spec, X)(U), ref, rtol=1e-10, atol=1e-12)


def test_hvp_equals_explicit_hessian(tiny64):
    spec, params, X, y = tiny64
    U = torch.randn(4, ParamLayout.of(params).numel, dtype=torch.float64)
    got = hvp_generic(build_mlp(spec).double(), params, X, y)(U)
    torch.testing.assert_close(got, U @ explicit_hessian(spec, params, X, y), rtol=1e-10, atol=1e-12)


def test_per_example_grads_match_autograd(tiny64):
    spec, params, X, y = tiny64
    model = build_mlp(spec).double()
    got = per_example_grads(model, params, X, y, chunk=4)
    for b in range(len(X)):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = torch.nn.functional.cross_entropy(functional_call(model, p, (X[b : b + 1],)), y[b : b + 1])
        g = torch.autograd.grad(loss, list(p.values()))
        torch.testing.assert_close(got[b], torch.cat([t.reshape(-1) for t in g]))
