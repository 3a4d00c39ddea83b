"""Single-trajectory simulation of parameter responses (method page):

    u_d ← u_d − η [ (H_t + (wd + λ) I) u_d + g_d ]      K steps from u_d = 0

whose fixed point is ``u_d = −H_λ⁻¹ g_d`` (``H_λ`` the curvature of the
training objective ``mean ℓ + (wd/2)|θ|²`` plus damping ``λ``). Directions
``d`` are training examples (``g_d = ∇ℓ(z_d)``) and sources
(``g_s = Σ_{b∈s} g_b``); all are propagated together, in chunks.

``posthoc`` runs around the trained optimum; ``alongside`` is a training
hook that runs over the last K steps of training, reusing their minibatches
and iterates. With one fixed curvature operator (posthoc, all examples) the
K steps are one linear map, which ``solver="spectral"`` evaluates in closed
form (``spectral.py``); ``solver="steps"`` is the step-by-step reference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..simulate.settings import MethodConfig
from ..simulate.spectral import LowRankFilter, nystrom
from .curvature import LinearStackGGN, ggn_generic, hvp_generic, mlp_example_grads, per_example_grads
from .model import MLPSpec, build_mlp


@dataclass
class Responses:
    examples: torch.Tensor | None  # (n, p)
    sources: torch.Tensor | None  # (S, p)
    diagnostics: dict = field(default_factory=dict)  # how they were computed (solver, rank, tail estimate)


class Simulator:
    """X ``(n, d)``, y ``(n,)``, source ``(n,)`` in ``[0, n_sources)``, all on
    one device, where everything runs (random draws are made on the CPU from
    the seed and moved there, so every device simulates the same map)."""

    def __init__(self, cfg: MethodConfig, spec: MLPSpec, weight_decay: float,
                 X: torch.Tensor, y: torch.Tensor, source: torch.Tensor, n_sources: int):
        self.cfg, self.spec = cfg, spec
        self.shift = weight_decay + cfg.damping
        self.X, self.y, self.source, self.n_sources = X, y, source, n_sources
        self.model = build_mlp(spec).to(dtype=X.dtype, device=X.device)
        self.U: torch.Tensor | None = None
        self.diagnostics: dict = {}

    @property
    def solver(self) -> str:
        """``spectral`` or ``steps``: what ``propagate`` will run."""
        return self.cfg.resolved_solver()

    # -- pieces -------------------------------------------------------------
    def directions(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(R, p)``: example gradients, then source sums, as configured."""
        g = (mlp_example_grads(params, self.spec, self.X, self.y) if self.cfg.fast_path
             else per_example_grads(self.model, params, self.X, self.y))
        rows = []
        if self.cfg.directions in ("examples", "both"):
            rows.append(g)
        if self.cfg.directions in ("sources", "both"):
            rows.append(g.new_zeros((self.n_sources, g.shape[1])).index_add_(0, self.source, g))
        return torch.cat(rows)

    def curvature(self, params: dict[str, torch.Tensor], idx: torch.Tensor | None):
        """``U -> H_t U`` on the examples ``idx`` (None: all)."""
        X = self.X if idx is None else self.X[idx]
        if self.cfg.curvature == "hessian":
            y = self.y if idx is None else self.y[idx]
            return hvp_generic(self.model, params, X, y)
        if self.cfg.fast_path:
            return LinearStackGGN(params, self.spec, X, self.cfg.ggn_block)
        return ggn_generic(self.model, params, X)

    def step(self, U: torch.Tensor, G: torch.Tensor, product) -> torch.Tensor:
        """One propagation step for all directions, chunked for memory."""
        eta, c = self.cfg.eta, self.cfg.chunk
        for s in range(0, U.shape[0], c):
            u = U[s : s + c]
            u -= eta * (product(u) + self.shift * u + G[s : s + c])
        return U

    def split(self, U: torch.Tensor) -> Responses:
        n = len(self.X) if self.cfg.directions in ("examples", "both") else 0
        ex = U[:n] if n else None
        src = U[n:] if self.cfg.directions in ("sources", "both") else None
        return Responses(ex, src, dict(self.diagnostics))

    # -- schedules ----------------------------------------------------------
    def posthoc(self, params: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]], seed: int,
                progress=None) -> Responses:
        """K steps around ``params`` for every direction; given a list of
        iterates, the mean of their responses (``propagate_mean``)."""
        iterates = [params] if isinstance(params, dict) else list(params)
        return self.split(self.propagate_mean(iterates, seed, progress=progress))

    def propagate_mean(self, iterates: Sequence[dict[str, torch.Tensor]], seed: int, rows: slice = slice(None),
                       checkpoints: Sequence[StepCheckpoint | None] | None = None, progress=None) -> torch.Tensor:
        """``mean_c propagate(iterates[c])`` for the directions ``rows``,
        ``(r, p)``: each iterate's K-step map applied to its own gradients
        (``iterates.py``). One iterate: exactly ``propagate``."""
        U, diags = None, []
        for c, params in enumerate(iterates):
            ck = None if checkpoints is None else checkpoints[c]
            u = self.propagate(params, seed, rows, ck, progress)
            U = u if U is None else U.add_(u)
            diags.append(self.diagnostics)
        U /= len(iterates)
        self.diagnostics = dict(diags[-1])
        if len(iterates) > 1:
            self.diagnostics["iterates"] = len(iterates)
            if all("tail_estimate" in d for d in diags):
                self.diagnostics["tail_estimate"] = max(d["tail_estimate"] for d in diags)
        return U

    def propagate(self, params: dict[str, torch.Tensor], seed: int, rows: slice = slice(None),
                  checkpoint: StepCheckpoint | None = None, progress=None) -> torch.Tensor:
        """Post-hoc propagation of the directions ``rows`` (a shard), ``(r, p)``.

        Curvature on all examples, or on a fresh random batch of
        ``curvature_batch`` each step drawn from ``seed`` (identical on every
        shard). With ``checkpoint``, state is saved every few steps and a
        rerun resumes where the last one stopped, bit for bit."""
        G = self.directions(params)[rows]
        if self.solver == "spectral":
            return self.spectral(params, seed, progress)(G)
        U, start = torch.zeros_like(G), 0
        full = self.cfg.curvature_batch == 0 or self.cfg.curvature_batch >= len(self.X)
        product = self.curvature(params, None) if full else None
        gen = torch.Generator().manual_seed(seed)
        if checkpoint is not None and (state := checkpoint.load()) is not None:
            start, U = state["step"], state["U"].to(G.device)
            gen.set_state(state["gen"])
            if progress is not None:
                progress.update(start)
        for t in range(start, self.cfg.steps):
            if not full:
                idx = torch.randperm(len(self.X), generator=gen)[: self.cfg.curvature_batch].to(self.X.device)
                product = self.curvature(params, idx)
            self.step(U, G, product)
            if checkpoint is not None:
                checkpoint.maybe_save(t + 1, U, gen)
            if progress is not None:
                progress.update(1)
        return U

    def spectral(self, params: dict[str, torch.Tensor], seed: int, progress=None) -> LowRankFilter:
        """The K-step map ``g -> u_K`` around ``params`` in closed form:
        a rank-``cfg.rank`` Nyström eigenbasis of the full-set curvature
        (drawn from ``seed``, identical on every shard), then the filter."""
        c = self.cfg
        product = self.curvature(params, None)
        p = sum(v.numel() for v in params.values())
        if c.curvature != "ggn" and c.rank < p:
            raise ValueError("solver=spectral with a Hessian needs rank >= p (an exact eigendecomposition): "
                             "the Nyström basis assumes a PSD curvature")

        done = [0]

        def counted(U: torch.Tensor) -> torch.Tensor:
            out = product(U)
            done[0] += 1
            if progress is not None:
                progress.update(1)
            return out

        gen = torch.Generator().manual_seed(seed)
        basis = nystrom(counted, p, c.rank, c.power, gen, self.X.dtype, self.X.device)
        filt = LowRankFilter(basis, self.shift, c.step_size(float(basis.h[0]) + self.shift), c.steps)
        if progress is not None:
            progress.update(c.power + 2 - done[0])  # the rest of work_units(): the filter
        self.diagnostics = {"solver": "spectral", "rank": len(basis.h), "exact": basis.exact,
                            "tail_estimate": filt.tail_bound, "smallest_eigenvalue": float(basis.h[-1])}
        return filt

    def alongside(self, total_steps: int, progress=None):
        """A ``worker.train`` hook: propagate during the last K of
        ``total_steps`` training steps with that step's iterate and batch."""
        first = max(0, total_steps - self.cfg.steps)

        def hook(t: int, params: dict[str, torch.Tensor], idx: torch.Tensor) -> None:
            if t < first:
                return
            G = self.directions(params)
            if self.U is None:
                self.U = torch.zeros_like(G)
            self.step(self.U, G, self.curvature(params, idx))
            if progress is not None:
                progress.update(1)

        return hook

    def result(self) -> Responses:
        if self.U is None:
            raise RuntimeError("the alongside hook never ran")
        return self.split(self.U)


class StepCheckpoint:
    """Propagation state on disk, written atomically every ``every`` steps."""

    def __init__(self, path: Path, every: int):
        self.path, self.every = Path(path), every

    def load(self) -> dict | None:
        return torch.load(self.path) if self.path.exists() else None

    def maybe_save(self, step: int, U: torch.Tensor, gen: torch.Generator) -> None:
        if step % self.every:
            return
        tmp = self.path.with_suffix(".tmp")
        torch.save({"step": step, "U": U, "gen": gen.get_state()}, tmp)
        os.replace(tmp, self.path)
