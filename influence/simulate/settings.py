"""Typed simulation settings (the method page's knobs), shared by the worker's
config, the store's manifest and the benchmarks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BLOCK_ELEMENTS = 1 << 22  # LinearStackGGN's default block (method.ggn_block): bench/worker_step


class MethodConfig(BaseModel):
    """Simulation settings (method page): ``u ← u − η[(H_t + λI)u + g]``.

    ``solver`` picks how the posthoc propagation is computed: ``steps`` runs
    the K damped steps one by one (the reference); ``spectral`` evaluates the
    same K-step map in closed form through a rank-``rank`` eigenbasis of the
    curvature (``influence.simulate.spectral``); ``auto`` takes ``spectral``
    wherever the curvature is one fixed PSD operator (single trajectory,
    posthoc, Gauss-Newton, curvature on all examples) and ``steps``
    elsewhere.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["single", "two"] = "single"
    curvature: Literal["ggn", "hessian", "fisher"] = Field(
        "ggn", description="ggn: Gauss-Newton (on curvature_subset examples); hessian: the MLP's exact Hessian; "
                           "fisher (text kinds): the empirical Fisher of every training block, sketched at rank "
                           "min(rank, blocks) in the gradient pass itself (exact when rank >= blocks)")
    schedule: Literal["posthoc", "alongside"] = "posthoc"
    steps: int = Field(300, ge=1, description="K, the horizon")
    eta: float = Field(0.4, ge=0, description="step size of the propagation; 0 = auto (spectral solver only): "
                       "1/λ_max of the damped curvature, found by the eigenbasis")
    damping: float = Field(0.003, ge=0, description="λ, added to H + weight_decay·I")
    curvature_batch: int = Field(0, ge=0, description="examples per curvature product; 0 = all")
    directions: Literal["examples", "sources", "both"] = "both"
    ensemble: int = Field(1, ge=1, le=64)
    chunk: int = Field(128, ge=1, description="directions propagated together (memory bound)")
    epsilon: float = Field(1e-4, gt=0, description="upweight of the two-trajectory mode")
    fast_path: bool = Field(True, description="closed-form linear-stack products instead of torch.func")
    ggn_block: int = Field(BLOCK_ELEMENTS, ge=1, description="fast path: hidden-tangent floats per block of examples "
                           "(speed only; the float summation order, so the last bits, depend on it)")
    solver: Literal["auto", "spectral", "steps"] = Field(
        "auto", description="posthoc propagation: closed form through an eigenbasis, or K steps one by one")
    rank: int = Field(512, ge=1, description="spectral: eigenbasis rank k (k >= p: exact eigendecomposition)")
    power: int = Field(1, ge=0, le=8, description="spectral: subspace-iteration steps before the Nyström step")
    curvature_subset: int = Field(0, ge=0, description="spectral: curvature on a fixed random subset of this many "
                                  "examples (text: blocks), drawn from the seed; 0 = all")
    compress_rank: int = Field(0, ge=0, description="text stores: per-document responses kept as a rank-r basis "
                               "+ coefficients (0 = exact rows)")
    iterates: int = Field(1, ge=1, le=64, description="posthoc: responses averaged over the last C training "
                          "iterates (epoch ends, iterate_every apart), read out at the final model; 1 = final only")
    iterate_every: int = Field(4, ge=1, description="epochs between two averaged iterates")

    @model_validator(mode="after")
    def _spectral_applies(self):
        if self.eta == 0 and self.resolved_solver() != "spectral":
            raise ValueError("eta=0 (auto) needs the spectral solver, which measures λ_max")
        if self.solver == "spectral" and (self.mode, self.schedule, self.curvature_batch) != ("single", "posthoc", 0):
            raise ValueError("solver=spectral needs mode=single, schedule=posthoc and curvature_batch=0 "
                             "(one fixed curvature operator); use solver=steps or auto")
        if self.iterates > 1 and (self.mode, self.schedule) != ("single", "posthoc"):
            raise ValueError(f"iterates={self.iterates} (response averaging over training iterates) needs "
                             "mode=single and schedule=posthoc; set method.iterates=1 for mode=two or "
                             "schedule=alongside")
        return self

    def iterate_epochs(self, epochs: int) -> list[int]:
        """Epoch ends whose iterates are averaged, earliest first; the last
        is ``epochs`` (the final model). Raises if the first is before epoch 1."""
        out = [epochs - self.iterate_every * c for c in reversed(range(self.iterates))]
        if out[0] < 1:
            raise ValueError(f"iterates={self.iterates} every {self.iterate_every} epochs reaches back to epoch "
                             f"{out[0]}; training runs {epochs} epochs")
        return out

    def step_size(self, top: float) -> float:
        """η for a curvature whose largest damped eigenvalue is ``top``."""
        return self.eta or 1.0 / top

    def resolved_solver(self) -> Literal["spectral", "steps"]:
        """What ``solver="auto"`` means for these settings."""
        if self.solver != "auto":
            return self.solver
        return "spectral" if self.fixed_operator() and self.curvature in ("ggn", "fisher") else "steps"

    def work_units(self) -> tuple[int, str]:
        """Progress-bar units of one member's single-trajectory simulation."""
        per = self.power + 2 if self.resolved_solver() == "spectral" else self.steps
        return per * self.iterates, "stage" if self.resolved_solver() == "spectral" else "step"

    def fixed_operator(self) -> bool:
        """One curvature operator for all K steps (posthoc, all examples)."""
        return (self.mode, self.schedule, self.curvature_batch) == ("single", "posthoc", 0)
