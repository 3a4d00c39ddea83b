"""Ours: the worker's single-trajectory simulation, read out forward-only.

The posthoc schedule with full-set curvature iterates a *fixed* linear map,
``U ← U − η[(H + sI)U + G]`` with ``s = weight_decay + λ`` (``worker.simulate``),
so after ``K`` steps from zero, in the eigenbasis ``H = V diag(h) Vᵀ`` of the
Gauss-Newton matrix, ``U_K = −V diag(φ) Vᵀ G`` with
``φ = (1 − (1 − η(h+s))^K) / (h+s)``. ``Spectral`` computes exactly that
(one explicit GGN and one ``eigh`` per model, ~p = 9.6k here), so one
eigendecomposition serves every ``(λ, K)`` of a sweep. ``check_against_worker``
runs the worker's own ``Simulator`` on a sample of directions and compares.
``worker_run`` runs ``worker.pipeline.simulate_member`` as is (the alongside
and two-trajectory modes, and the posthoc mode end to end).
"""

from __future__ import annotations

import time

import torch
from torch.func import functional_call, jacrev, vmap

from bench.digits.protocol import Data
from bench.harness.common import cached, digest
from influence.mlp.curvature import per_example_grads
from influence.mlp.model import MLPSpec, ParamLayout, build_mlp
from influence.mlp.propagate import Simulator
from influence.mlp.readout import linear_stack_scores, mlp_forward, split_layers
from influence.outputs import cross_entropy_hessian, output_grad
from worker.config import WorkerConfig


def logit_jacobians(params: dict[str, torch.Tensor], spec: MLPSpec, X: torch.Tensor) -> torch.Tensor:
    """Per-example Jacobian of the logits, ``(N, C, p)`` flat."""
    model, layout = build_mlp(spec), ParamLayout.of(params)
    f = lambda p, x: functional_call(model, p, (x[None],))[0]  # noqa: E731
    J = vmap(jacrev(f), in_dims=(None, 0))(params, X)
    return layout.flatten({k: v.reshape(X.shape[0], spec.n_classes, *v.shape[2:]) for k, v in J.items()}
                          ).view(X.shape[0], spec.n_classes, -1)


def query_grads(params: dict[str, torch.Tensor], spec: MLPSpec, Xq: torch.Tensor, yq: torch.Tensor,
                kind: str = "margin") -> torch.Tensor:
    """``∇_θ f(q)`` for every query, ``(m, p)``."""
    J = logit_jacobians(params, spec, Xq)
    logits = mlp_forward(params, spec, Xq)[0]
    return torch.einsum("mc,mcp->mp", output_grad(logits, yq, kind), J)


class Spectral:
    """Eigendecomposition of the GGN of ``mean ℓ`` at ``params`` on ``X``.
    ``h (p,)`` float64 eigenvalues, ``V (p, p)`` float32 eigenvectors."""

    def __init__(self, params: dict[str, torch.Tensor], spec: MLPSpec, X: torch.Tensor):
        t0 = time.perf_counter()
        J = logit_jacobians(params, spec, X)  # (N, C, p)
        A = cross_entropy_hessian(mlp_forward(params, spec, X)[0])  # (N, C, C)
        AJ = torch.einsum("ncd,ndp->ncp", A, J)
        H = J.reshape(-1, J.shape[-1]).T @ AJ.reshape(-1, J.shape[-1]) / X.shape[0]
        del J, AJ
        h, self.V = torch.linalg.eigh((H + H.T) / 2)
        self.h = h.double().clamp_min(0.0)  # PSD; rounding can give -1e-7
        self.seconds = time.perf_counter() - t0

    def phi(self, shift: float, eta: float, steps: int | None) -> torch.Tensor:
        """``(p,)`` float32 filter; ``steps=None``: the exact inverse ``1/(h+s)``."""
        d = self.h + shift
        if steps is None:
            return (1.0 / d).float()
        return ((1.0 - (1.0 - eta * d) ** steps) / d).float()

    def rotate(self, G: torch.Tensor) -> torch.Tensor:
        """``(R, p) -> (R, p)``: coordinates ``G V`` in the eigenbasis."""
        return G @ self.V

    def responses(self, Grot: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """``u = −V φ Vᵀ g`` for rotated directions ``Grot (R, p)`` -> ``(R, p)``."""
        return -(Grot * phi) @ self.V.T


class Member:
    """One trained model's pieces for every (λ, K): rotated example gradients
    ``B (n, p)``, source sums ``Bs (S, p)`` and query gradients ``A (m, p)``."""

    def __init__(self, params, spec: MLPSpec, data: Data, wd: float):
        self.params, self.spec, self.wd = params, spec, wd
        t0 = time.perf_counter()
        self.spectral = Spectral(params, spec, data.X)
        G = per_example_grads(build_mlp(spec), params, data.X, data.y)  # the worker's directions
        Gs = G.new_zeros((data.n_sources, G.shape[1])).index_add_(0, data.source, G)
        self.B, self.Bs = self.spectral.rotate(G), self.spectral.rotate(Gs)
        self.precompute_s = time.perf_counter() - t0  # GGN + eigh + gradients
        Gq = query_grads(params, spec, data.Xq, data.yq)
        self.tau_graddot = -Gq @ G.T  # gradient dot product, same sign convention
        self.A = self.spectral.rotate(Gq)

    def tau(self, damping: float, eta: float, steps: int | None) -> torch.Tensor:
        """``τ (m, n) = ∇f(q)ᵀ u_b`` with ``u_b`` the K-step response."""
        phi = self.spectral.phi(self.wd + damping, eta, steps)
        return -(self.A * phi) @ self.B.T

    def response_blocks(self, damping: float, eta: float, steps: int | None):
        """Example and source responses ``(n, p)``, ``(S, p)`` as the worker stores them."""
        phi = self.spectral.phi(self.wd + damping, eta, steps)
        return self.spectral.responses(self.B, phi), self.spectral.responses(self.Bs, phi)


def member_cached(params, cfg: WorkerConfig, data: Data, seed: int, grid: list[tuple[float, int | None]],
                  main: tuple[float, int], cache_dir, version: int = 1) -> dict:
    """Everything the benchmark needs from one member, cached on disk:
    ``taus`` ``{(λ, K): τ (m, n)}`` over ``grid`` (η from ``cfg``),
    ``graddot (m, n)``, responses ``U_ex (n, p)`` / ``U_src (S, p)`` at
    ``main`` and ``readout (m, n)``: the product's forward readout of
    ``U_ex`` (its gap to the spectral τ is ``readout_gap``)."""

    def compute() -> dict:
        m = Member(params, cfg.model, data, cfg.train.weight_decay)
        eta = cfg.method.eta
        U_ex, U_src = m.response_blocks(main[0], eta, main[1])
        with torch.no_grad():
            ro = readout([params], [split_layers(U_ex, cfg.model)], cfg.model, data.Xq, data.yq)
        ref = m.tau(main[0], eta, main[1])
        return {"taus": {g: m.tau(g[0], eta, g[1]) for g in grid}, "graddot": m.tau_graddot, "U_ex": U_ex,
                "U_src": U_src, "readout": ro, "readout_gap": ((ro - ref).abs().max() / ref.abs().max()).item(),
                "precompute_s": m.precompute_s, "params": params}

    key = digest([data.fingerprint, cfg.train.model_dump(mode="json"), cfg.model.model_dump(mode="json"), seed, grid,
                  main, cfg.method.eta, version])
    return cached(cache_dir / f"ours-{key}.pt", compute)


def preset_member(iterates: list[dict[str, torch.Tensor]], cfg: WorkerConfig, data: Data, seed: int, cache_dir,
                  version: int = 1) -> dict:
    """The worker's own simulation at ``cfg.method`` for one member (the
    Simulator's posthoc responses averaged over ``iterates``, its epoch-end
    iterates, final model last) read out forward-only at the final model:
    ``tau (m, n)`` and ``simulate_s``; cached on disk."""
    iterates = iterates[len(iterates) - cfg.method.iterates:]

    def compute() -> dict:
        sim = Simulator(cfg.method, cfg.model, cfg.train.weight_decay, data.X, data.y, data.source, data.n_sources)
        t0 = time.perf_counter()
        resp = sim.posthoc(iterates, seed)
        res = {"simulate_s": time.perf_counter() - t0, "diagnostics": resp.diagnostics}
        with torch.no_grad():
            res["tau"] = readout([iterates[-1]], [split_layers(resp.examples, cfg.model)], cfg.model, data.Xq, data.yq)
        return res

    key = digest([data.fingerprint, cfg.train.model_dump(mode="json"), cfg.model.model_dump(mode="json"),
                  cfg.method.model_dump(mode="json"), seed, version])
    return cached(cache_dir / f"preset-{key}.pt", compute)


def check_against_worker(params, U_ex: torch.Tensor, cfg: WorkerConfig, data: Data, count: int = 64) -> float:
    """Relative max error of spectral responses ``U_ex (n, p)`` (computed at
    ``cfg.method``'s damping, η, K) against the worker's own ``Simulator``
    (posthoc, full-set GGN) run on ``count`` evenly spaced example directions."""
    m = cfg.method
    idx = torch.arange(0, len(data.X), max(1, len(data.X) // count))[:count]
    G = per_example_grads(build_mlp(cfg.model), params, data.X[idx], data.y[idx])
    sim = Simulator(m, cfg.model, cfg.train.weight_decay, data.X, data.y, data.source, data.n_sources)
    U = torch.zeros_like(G)
    product = sim.curvature(params, None)
    for _ in range(m.steps):
        sim.step(U, G, product)
    return ((U - U_ex[idx]).abs().max() / U.abs().max()).item()


def readout(member_params: list, layers: list, spec: MLPSpec, Xq: torch.Tensor, yq: torch.Tensor,
            chunk: int | None = None) -> torch.Tensor:
    """The product's query path: forward-only JVP readout, averaged over
    members. layers: per member ``split_layers`` blocks; ``chunk``: responses
    per pass (None: the library default). Returns ``(m, R)``."""
    out = None
    for p, lay in zip(member_params, layers, strict=True):
        s = linear_stack_scores(p, spec, lay, Xq, yq, "margin", chunk=chunk)
        out = s if out is None else out + s
    return out / len(layers)


def probe_costs(params, cfg: WorkerConfig, data: Data, steps: int = 5) -> dict:
    """Training-side cost now, uncached: the spectral path for one member and
    ``steps`` posthoc propagation steps of the worker's ``Simulator`` (all
    1437 + 20 directions, its default chunk), extrapolated to ``K``."""
    t0 = time.perf_counter()
    Member(params, cfg.model, data, cfg.train.weight_decay)
    spectral = time.perf_counter() - t0
    sim = Simulator(cfg.method, cfg.model, cfg.train.weight_decay, data.X, data.y, data.source, data.n_sources)
    t0 = time.perf_counter()
    G = sim.directions(params)
    U, product = torch.zeros_like(G), sim.curvature(params, None)
    setup = time.perf_counter() - t0
    sim.step(U, G, product)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        sim.step(U, G, product)
    per_step = (time.perf_counter() - t0) / steps
    return {"spectral_member_s": spectral, "worker_step_s": per_step,
            "worker_posthoc_estimate_s": setup + per_step * cfg.method.steps, "steps_timed": steps}


WORKER_MODES = {
    # the digits preset as the worker runs it: GGN, full set, K=300, η=0.4, λ=0.003, 8 iterates averaged
    "posthoc": [],
    # last K=300 training steps, their minibatches (one trajectory: no iterate averaging)
    "alongside": ["method.schedule=alongside", "method.iterates=1"],
    "two": ["method.mode=two", "method.steps=100", "method.iterates=1"],  # real optimizer, float64; K=100
}


def worker_cached(mode: str, data: Data, seed: int, cache_dir, compute: bool = True) -> dict | None:
    """``simulate_member`` for ``WORKER_MODES[mode]`` as the worker runs it,
    τ by the product's forward readout; cached. Returns ``tau (m, n)``,
    ``seconds`` (training + simulation, measured) and ``overrides``; None when
    not cached and ``compute`` is false."""
    from worker.config import load_config
    from worker.pipeline import simulate_member

    cfg = load_config("digits", overrides=WORKER_MODES[mode])
    key = digest([data.fingerprint, cfg.model_dump(mode="json"), seed], sort_keys=True, default=str)
    path = cache_dir / f"worker-{mode}-{key}.pt"
    if not (compute or path.exists()):
        return None

    def run() -> dict:
        t0 = time.perf_counter()
        trained, resp = simulate_member(cfg, data.X, data.y, data.source, data.n_sources, seed)
        secs = time.perf_counter() - t0
        with torch.no_grad():
            tau = linear_stack_scores(trained.params, cfg.model, split_layers(resp.examples.float(), cfg.model),
                                      data.Xq, data.yq)
        return {"tau": tau, "seconds": secs, "overrides": WORKER_MODES[mode],
                "method": cfg.method.model_dump(mode="json")}

    return cached(path, run)
