"""The closed-form (spectral) posthoc simulation equals the step-by-step
reference: exactly at full rank, within its stated tail estimate at low
rank (float64, explicit matrices)."""

from __future__ import annotations

import pytest
import torch

from influence.mlp.curvature import mlp_example_grads, per_example_grads
from influence.mlp.model import MLPSpec, build_mlp, init_params
from influence.mlp.propagate import Simulator
from influence.simulate.settings import MethodConfig
from influence.simulate.spectral import LowRankFilter, horizon_filter, nystrom

SHIFT, ETA = 0.01, 0.4


def _steps(product, G: torch.Tensor, shift: float, eta: float, K: int) -> torch.Tensor:
    """The method page's propagation, one step at a time (the reference)."""
    U = torch.zeros_like(G)
    for _ in range(K):
        U = U - eta * (product(U) + shift * U + G)
    return U


def _decaying_psd(p: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``H (p, p)`` with eigenvalues ``2·10^(−i/8)`` in a random basis, and its eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64)).Q
    h = 2.0 * 10.0 ** (-torch.arange(p, dtype=torch.float64) / 8)
    return (Q * h) @ Q.T, h


@pytest.mark.parametrize("K", [1, 7, 300, None])
def test_full_rank_filter_equals_steps(K):
    H, _ = _decaying_psd(40)
    G = torch.randn(9, 40, dtype=torch.float64)
    basis = nystrom(lambda U: U @ H, 40, rank=40, power=0, gen=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    assert basis.exact
    got = LowRankFilter(basis, SHIFT, ETA, K)(G)
    if K is None:  # the damped inverse
        want = -torch.linalg.solve(H + SHIFT * torch.eye(40, dtype=H.dtype), G.T).T
    else:
        want = _steps(lambda U: U @ H, G, SHIFT, ETA, K)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_low_rank_error_shrinks_with_rank_and_stays_near_its_estimate():
    p = 120
    H, h = _decaying_psd(p)
    G = torch.randn(16, p, dtype=torch.float64)
    want = _steps(lambda U: U @ H, G, SHIFT, ETA, 300)
    errors = []
    for rank in (16, 32, 48):
        basis = nystrom(lambda U: U @ H, p, rank, power=1, gen=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
        f = LowRankFilter(basis, SHIFT, ETA, 300)
        err = ((f(G) - want).norm() / want.norm()).item()
        errors.append(err)
        assert err < 5 * f.tail_bound + 1e-9, (rank, err, f.tail_bound)
        # the recovered top eigenvalues are the true ones
        torch.testing.assert_close(basis.h[:4], h[:4], rtol=1e-2, atol=0)
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 1e-4, errors


def test_horizon_filter_is_the_neumann_sum():
    h = torch.tensor([0.0, 1e-3, 0.5, 2.0], dtype=torch.float64)
    K = 25
    neumann = sum((1 - ETA * (h + SHIFT)) ** j for j in range(K)) * ETA
    torch.testing.assert_close(horizon_filter(h, SHIFT, ETA, K), neumann, rtol=1e-12, atol=0)


def test_mlp_example_grads_equal_autograd(tiny64):
    spec, params, X, y = tiny64
    torch.testing.assert_close(mlp_example_grads(params, spec, X, y, chunk=4),
                               per_example_grads(build_mlp(spec).double(), params, X, y), rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def mlp_problem():
    spec = MLPSpec(widths=[6, 10, 4], activation="relu")
    g = torch.Generator().manual_seed(2)
    X = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (40,), generator=g)
    source = torch.arange(40) % 3
    return spec, init_params(spec, seed=1, dtype=torch.float64), X, y, source


@pytest.mark.parametrize("rank", [10_000, 60])
def test_simulator_spectral_equals_steps(mlp_problem, rank):
    """Simulator end to end: examples and sources, exact at full rank (p = 114),
    within 1e-2 relative and a few times its tail estimate at rank 60 with
    one power step (an untrained net: a slowly decaying spectrum)."""
    spec, params, X, y, source = mlp_problem
    out = {}
    for solver in ("steps", "spectral"):
        cfg = MethodConfig(steps=200, eta=0.5, damping=0.01, solver=solver, rank=rank, chunk=16)
        sim = Simulator(cfg, spec, 1e-3, X, y, source, 3)
        r = sim.posthoc(params, seed=0)
        out[solver] = torch.cat([r.examples, r.sources])
    assert spec.layout().numel == 114
    if rank >= 114:
        assert r.diagnostics["exact"]
        torch.testing.assert_close(out["spectral"], out["steps"], rtol=1e-9, atol=1e-11)
    else:
        rel = ((out["spectral"] - out["steps"]).norm() / out["steps"].norm()).item()
        assert rel < min(1e-2, 5 * r.diagnostics["tail_estimate"]), (rel, r.diagnostics)
        assert r.diagnostics["rank"] <= 60 and not r.diagnostics["exact"]


def test_auto_solver_and_its_limits():
    assert MethodConfig().resolved_solver() == "spectral"
    assert MethodConfig(curvature_batch=64).resolved_solver() == "steps"
    assert MethodConfig(schedule="alongside").resolved_solver() == "steps"
    assert MethodConfig(curvature="hessian").resolved_solver() == "steps"
    with pytest.raises(ValueError, match="solver=spectral needs"):
        MethodConfig(solver="spectral", schedule="alongside")


def test_a_diverging_step_size_is_refused():
    H, h = _decaying_psd(10)
    basis = nystrom(lambda U: U @ H, 10, rank=10, power=0, gen=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    with pytest.raises(ValueError, match="diverges"):
        LowRankFilter(basis, SHIFT, eta=2.0 / float(h[0]) + 0.1, steps=300)
    LowRankFilter(basis, SHIFT, eta=2.0 / float(h[0]) + 0.1, steps=None)  # the damped inverse needs no step size
