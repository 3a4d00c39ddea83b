"""TRAK (``traker`` 0.3.2, CPU) on the same checkpoints, and its query cost.

Features come from ``traker.TRAKer`` itself (``BasicProjector``, normal
projection, ``proj_dim`` 2048, float32, the ``image_classification`` margin
output ``z_y − logsumexp(z_{≠y})``). 0.3.2 has ``lambda_reg`` (added to
``XᵀX`` before the inverse, in traker's units: features scaled by
``1/sqrt(p)``); one λ goes through ``finalize_features``/``finalize_scores``
and the sweep re-applies ``BasicScoreComputer`` with other λ to the same
saved features, which is exactly traker's arithmetic (checked against the
traker run). Scores: ``τ (m, n)``, mean over members of ``φ_q (XᵀX+λI)⁻¹
φ_b`` times the member-mean out-to-loss weight ``1 − p_b``, as
``finalize_scores`` computes them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time

import torch

from bench.digits.protocol import Data
from bench.harness.trak import finalized
from influence.mlp.model import MLPSpec, build_mlp


class Trak:
    """Featurize all members; ``scores(lam, members)`` -> ``(m, n)``."""

    def __init__(self, params: list[dict[str, torch.Tensor]], spec: MLPSpec, data: Data,
                 proj_dim: int = 2048, lam: float = 100.0):
        from trak import TRAKer

        self.dir = tempfile.mkdtemp(prefix="trak-")
        self.model = build_mlp(spec)
        self.params, self.data, self.lam = params, data, lam
        n, m = len(data.X), len(data.Xq)
        self.t = TRAKer(model=self.model, task="image_classification", train_set_size=n, save_dir=self.dir,
                        load_from_save_dir=True, device="cpu", proj_dim=proj_dim, use_half_precision=False,
                        lambda_reg=lam, logging_level=logging.WARNING)
        self.featurize_s = []  # per member: train gradients + projection
        for e, p in enumerate(params):
            t0 = time.perf_counter()
            self.t.load_checkpoint(p, model_id=e)
            self.t.featurize(batch=(data.X, data.y), num_samples=n)
            self.featurize_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        self.t.finalize_features()
        self.finalize_s = (time.perf_counter() - t0) / len(params)  # per member: (XᵀX+λI)⁻¹
        for e, p in enumerate(params):
            self.t.start_scoring_checkpoint("q", p, model_id=e, num_targets=m)
            self.t.score(batch=(data.Xq, data.yq), num_samples=m)
        self.grads, self.targets, self.otl = [], [], []
        for e in range(len(params)):
            self.t.saver.load_current_store(e)  # train features of member e
            self.t.saver.load_current_store(e, "q", m)  # and its query gradients
            st = self.t.saver.current_store
            self.grads.append(torch.as_tensor(st["grads"][:]).float().clone())
            self.targets.append(torch.as_tensor(st["q_grads"][:]).float().clone())
            self.otl.append(torch.as_tensor(st["out_to_loss"][:]).float().clone())

    def precompute_s(self, members: int) -> float:
        """Training-side seconds for the first ``members`` (checkpoints given)."""
        return sum(self.featurize_s[:members]) + self.finalize_s * members

    def traker_scores(self, members: int) -> torch.Tensor:
        """traker's own ``finalize_scores`` with ``self.lam`` -> ``(m, n)``."""
        s = self.t.finalize_scores("q", model_ids=list(range(members)))
        return torch.as_tensor(s[:]).float().T.clone()

    def features(self, lam: float, e: int) -> torch.Tensor:
        """``X (XᵀX + λI)⁻¹`` of member ``e`` (traker's BasicScoreComputer), ``(n, k)``."""
        return finalized(self.grads[e], lam)

    def scores(self, lam: float, members: int) -> torch.Tensor:
        """``τ (m, n)`` for regulariser ``lam`` and the first ``members``."""
        acc = sum(self.features(lam, e) @ self.targets[e].T for e in range(members)) / members
        otl = sum(self.otl[:members]) / members  # (n, 1)
        return (acc * otl).T

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- query cost ----------------------------------------------------------
    def query_fn(self, lam: float, members: int, source: torch.Tensor | None, n_sources: int,
                 resident: bool):
        """A closure scoring all queries: per member, the query's margin
        gradient (traker's gradient computer), its projection, and a product
        with the precomputed train features (per source: features summed per
        source first). ``resident``: projection matrix kept in memory instead
        of traker's ``BasicProjector`` regenerating it block by block."""
        gc, proj, norm = self.t.gradient_computer, self.t.projector, self.t.normalize_factor
        otl = sum(self.otl[:members]) / members
        feats = []
        for e in range(members):
            f = self.features(lam, e) * otl  # out-to-loss folded in
            if source is not None:
                f = f.new_zeros((n_sources, f.shape[1])).index_add_(0, source, f)
            feats.append(f)
        mats = [self._matrix(e) / norm for e in range(members)] if resident else None
        Xq, yq = self.data.Xq, self.data.yq

        def run() -> torch.Tensor:
            out = 0
            for e in range(members):
                gc.func_weights = dict(self.params[e])
                g = gc.compute_per_sample_grad(batch=(Xq, yq))
                if resident:
                    flat = torch.cat([g[k].reshape(len(Xq), -1) for k in self.params[e]], dim=1)
                    phi = flat @ mats[e]
                else:
                    phi = proj.project(g, model_id=e) / norm
                out = out + phi @ feats[e].T
            return out / members

        return run

    def _matrix(self, e: int) -> torch.Tensor:
        """The ``(p, k)`` matrix ``BasicProjector`` generates for member ``e``."""
        proj = self.t.projector
        proj.model_id = e
        proj.get_generator_states()
        blocks = []
        for state in proj.generator_states:
            proj.generate_sketch_matrix(state)
            blocks.append(proj.proj_matrix.clone())
        return torch.cat(blocks, dim=1)[:, : proj.proj_dim]
