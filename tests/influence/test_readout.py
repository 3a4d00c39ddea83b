"""The fast linear-stack readout equals torch.func JVP, the two-point
difference and the explicit gradient dot product (float64, tolerances
stated), and is invariant to batch and chunk sizes."""

from __future__ import annotations

import pytest
import torch

from influence.mlp.model import MLPSpec, build_mlp, init_params
from influence.mlp.readout import difference_scores, gradient_scores, jvp_scores, linear_stack_scores, split_layers


def _setup(activation: str, r: int = 11):
    torch.manual_seed(1)
    spec = MLPSpec(widths=[5, 7, 6, 4], activation=activation)
    params = init_params(spec, seed=2, dtype=torch.float64)
    model = build_mlp(spec).to(torch.float64)
    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    U = torch.randn(r, spec.layout().numel, dtype=torch.float64)
    return spec, params, model, x, y, U


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "sigmoid"])
@pytest.mark.parametrize("kind", ["margin", "loss", "logprob"])
def test_fast_path_equals_jvp_difference_and_gradient(activation, kind):
    spec, params, model, x, y, U = _setup(activation)
    resp = spec.layout().unflatten(U)
    fast = linear_stack_scores(params, spec, split_layers(U, spec), x, y, kind)
    ref = gradient_scores(model, params, resp, x, y, kind)
    assert fast.shape == (8, 11)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(jvp_scores(model, params, resp, x, y, kind), ref, rtol=1e-10, atol=1e-10)
    # central difference: O(h²) truncation, relu kinks are not crossed at h=1e-5
    diff = difference_scores(model, params, resp, x, y, kind, h=1e-5)
    torch.testing.assert_close(diff, ref, rtol=1e-6, atol=1e-6)


def test_batch_and_chunk_invariance():
    spec, params, _, x, y, U = _setup("relu", r=23)
    layers = split_layers(U, spec)
    full = linear_stack_scores(params, spec, layers, x, y)
    one_by_one = torch.cat([linear_stack_scores(params, spec, layers, x[i : i + 1], y[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(one_by_one, full, rtol=1e-12, atol=1e-12)
    for chunk in (1, 4, 7, 100):
        torch.testing.assert_close(linear_stack_scores(params, spec, layers, x, y, chunk=chunk), full)


@pytest.mark.parametrize("widths", [[64, 12, 10], [64, 128, 10], [20, 16, 12, 5]])
@pytest.mark.parametrize("r", [1, 5, 20])
def test_row_scores_do_not_depend_on_their_position(widths, r):
    """float32, as served: a row's scores are bit-identical wherever it sits
    in a fixed-size block (the service's batching relies on it; an MKL
    kernel for the skinny ``g @ Δc_Lᵀ`` broke it at C = 5 or 10). Not
    universal: with 5 inputs MKL's kernel for the first layer's own GEMM
    breaks it, which the service's ``batch_invariant`` probe reports."""
    spec = MLPSpec(widths=widths)
    params = init_params(spec, seed=3, dtype=torch.float32)
    gen = torch.Generator().manual_seed(4)
    layers = split_layers(torch.randn(r, spec.layout().numel, generator=gen), spec)
    x = torch.randn(16, widths[0], generator=gen)
    y = torch.randint(0, widths[-1], (16,), generator=gen)
    for kind in ("margin", "loss"):
        base = linear_stack_scores(params, spec, layers, x, y, kind)
        for shift in range(1, 16):
            rolled = linear_stack_scores(params, spec, layers, x.roll(shift, 0), y.roll(shift, 0), kind)
            assert torch.equal(base.roll(shift, 0), rolled), (kind, shift)


def test_scores_are_linear_in_responses():
    """Source responses that are sums of example responses score as sums."""
    spec, params, _, x, y, U = _setup("relu", r=10)
    groups = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    S = torch.zeros(3, U.shape[1], dtype=U.dtype).index_add_(0, groups, U)
    ex = linear_stack_scores(params, spec, split_layers(U, spec), x, y)
    src = linear_stack_scores(params, spec, split_layers(S, spec), x, y)
    torch.testing.assert_close(src, torch.zeros(8, 3, dtype=U.dtype).index_add_(1, groups, ex))


def test_reduced_precision_store_is_close():
    """bf16/fp16 responses upcast per chunk: error bounded by their precision."""
    spec, params, _, x, y, U = _setup("relu", r=30)
    p32 = {k: v.float() for k, v in params.items()}
    ref = linear_stack_scores(p32, spec, split_layers(U.float(), spec), x.float(), y)
    for dt, tol in ((torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
        got = linear_stack_scores(p32, spec, split_layers(U.to(dt), spec), x.float(), y)
        rel = (got - ref).norm() / ref.norm()
        assert rel < tol, (dt, rel)
