"""The simulation converges to the explicit damped inverse-curvature
influence, and the two-trajectory mode to the truncated Neumann series of
the exact Hessian (float64, tiny model, explicit matrices)."""

from __future__ import annotations

import pytest
import torch

from influence.mlp.curvature import per_example_grads
from influence.mlp.model import MLPSpec, build_mlp
from influence.mlp.propagate import Simulator
from worker.config import MethodConfig, TrainConfig
from worker.train import train
from worker.twotraj import two_trajectories

from .test_curvature import explicit_ggn, explicit_hessian

SPEC = MLPSpec(widths=[4, 6, 3], activation="tanh")
WD = 1e-2


@pytest.fixture(scope="module")
def problem():
    """12 examples in 3 sources, an MLP trained by full-batch GD to its optimum."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.arange(12) % 3
    source = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 0])
    recipe = TrainConfig(optimizer="sgd", lr=0.5, momentum=0.0, batch_size=12, epochs=4000, weight_decay=WD)
    trained = train(SPEC, X, y, recipe, seed=0, dtype=torch.float64)
    return X, y, source, recipe, trained


def _explicit(problem, kind, damping):
    X, y, source, _, trained = problem
    H = explicit_ggn(SPEC, trained.params, X) if kind == "ggn" else explicit_hessian(SPEC, trained.params, X, y)
    H_l = H + (WD + damping) * torch.eye(H.shape[0], dtype=H.dtype)
    G = per_example_grads(build_mlp(SPEC).double(), trained.params, X, y)
    G = torch.cat([G, torch.zeros(3, G.shape[1], dtype=G.dtype).index_add_(0, source, G)])
    return H_l, G


@pytest.mark.parametrize("kind", ["ggn", "hessian"])
def test_converges_to_explicit_damped_inverse(problem, kind):
    X, y, source, _, trained = problem
    damping = 0.05
    H_l, G = _explicit(problem, kind, damping)
    target = -torch.linalg.solve(H_l, G.T).T  # u_d = −H_λ⁻¹ g_d, (R, p)
    eta = 1.0 / torch.linalg.eigvalsh(H_l).max().item()
    errors = []
    for K in (10, 100, 3000):
        cfg = MethodConfig(curvature=kind, steps=K, eta=eta, damping=damping, chunk=5)
        r = Simulator(cfg, SPEC, WD, X, y, source, 3).posthoc(trained.params, seed=0)
        U = torch.cat([r.examples, r.sources])
        errors.append(((U - target).norm() / target.norm()).item())
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 1e-8, errors


def test_fast_and_generic_paths_agree(problem):
    X, y, source, _, trained = problem
    out = []
    for fast in (True, False):
        cfg = MethodConfig(steps=20, eta=0.5, damping=0.01, fast_path=fast, curvature_batch=5)
        r = Simulator(cfg, SPEC, WD, X, y, source, 3).posthoc(trained.params, seed=4)
        out.append(torch.cat([r.examples, r.sources]))
    torch.testing.assert_close(out[0], out[1], rtol=1e-10, atol=1e-12)


def test_source_responses_are_sums_of_example_responses(problem):
    X, y, source, _, trained = problem
    cfg = MethodConfig(steps=30, eta=0.5, curvature_batch=6, chunk=4)
    r = Simulator(cfg, SPEC, WD, X, y, source, 3).posthoc(trained.params, seed=1)
    summed = torch.zeros_like(r.sources).index_add_(0, source, r.examples)
    torch.testing.assert_close(r.sources, summed, rtol=1e-10, atol=1e-12)


def test_two_trajectories_match_truncated_neumann_series(problem):
    """Plain GD at the optimum: (θ⁺_K − θ_K)/ε = −η Σ_{j<K} (I − ηH)^j g."""
    X, y, source, recipe, trained = problem
    K, eta = 40, recipe.lr
    H_l, G = _explicit(problem, "hessian", 0.0)
    expected = torch.zeros_like(G)
    for _ in range(K):
        expected = expected - eta * (expected @ H_l + G)
    cfg = MethodConfig(mode="two", steps=K, epsilon=1e-5, chunk=7)
    r = two_trajectories(cfg, recipe, SPEC, trained, X, y, source, 3, seed=0)
    got = torch.cat([r.examples, r.sources])
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-4, rel


def test_alongside_runs_the_last_k_steps(problem):
    X, y, source, _, _ = problem
    recipe = TrainConfig(lr=0.2, batch_size=4, epochs=30, weight_decay=WD)
    cfg = MethodConfig(schedule="alongside", steps=25, eta=0.5, damping=0.01)
    sim = Simulator(cfg, SPEC, WD, X, y, source, 3)
    calls = []
    hook = sim.alongside(total_steps=90)
    trained = train(SPEC, X, y, recipe, seed=0, dtype=torch.float64,
                    on_step=lambda t, p, i: (calls.append(t), hook(t, p, i)))
    r = sim.result()
    assert trained.steps == 90 and len(calls) == 90
    assert r.examples.shape == (12, SPEC.layout().numel) and r.examples.abs().sum() > 0
    post = Simulator(cfg.model_copy(update={"schedule": "posthoc"}), SPEC, WD, X, y, source, 3)
    ref = post.posthoc(trained.params, seed=0).examples
    cos = torch.nn.functional.cosine_similarity(r.examples.flatten(), ref.flatten(), dim=0)
    assert cos > 0.8, cos
