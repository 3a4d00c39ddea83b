"""What the MLP audit (``worker.audit``) and the text audit
(``worker.audit_text``) share: the settings, the metrics and the JSON-safe
copy. Both import it; neither imports the other at module level."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from influence.audit import loso, source_lds, whatif_check

from .config import ConfigError

SCHEMA = 1


@dataclass(frozen=True)
class AuditSettings:
    """Audit size and draws; ``check`` names the CLI option of a bad value."""

    subsets: int = 16
    seeds: int = 2
    queries: int = 256
    loso: int = 20
    keep_prob: float = 0.5
    min_keep: int = 2
    selection_seed: int = 2024
    query_seed: int = 0
    matched: bool = False
    threads: int = 1

    def check(self) -> None:
        rules = (("subsets", "subsets", self.subsets >= 3, "at least 3"),
                 ("seeds", "seeds", self.seeds >= 1, "at least 1"),
                 ("queries", "queries", self.queries >= 2, "at least 2"),
                 ("loso-sources", "loso", self.loso >= 3, "at least 3"),
                 ("keep-prob", "keep_prob", 0 < self.keep_prob < 1, "strictly between 0 and 1"),
                 ("min-keep", "min_keep", self.min_keep >= 1, "at least 1"),
                 ("threads", "threads", self.threads >= 1, "at least 1"))
        for opt, attr, ok, need in rules:
            if not ok:
                raise ConfigError(f"--{opt}: must be {need}, got {getattr(self, attr)}")


def metrics(tau: np.ndarray, n: int, keep: np.ndarray, loso_idx: np.ndarray, full, subset, loso_m) -> dict:
    """Every audit metric from ``tau (m, S)``, ``n`` training examples and
    the margins ``full (E, m)``, ``subset (J, E, m)``, ``loso_m (L, E, m)``."""
    effect = (full[None] - loso_m).mean(1)  # (L, m): full − without s
    sub_change = subset.mean(1) - full.mean(0)[None]  # (J, m): subset − full
    t_l = tau[:, loso_idx]
    out = {"source_lds": source_lds(tau, keep, subset.mean(1))[0], **loso(t_l, effect)}
    out["whatif_loso"] = whatif_check(t_l, n, -effect, np.eye(len(loso_idx), dtype=bool))
    out["whatif_subsets"] = whatif_check(tau, n, sub_change, ~keep)
    out["_truth"] = {"effect_abs_mean": float(np.abs(effect).mean()),
                     "subset_change_abs_mean": float(np.abs(sub_change).mean())}
    return out


def finite(x):
    """JSON-safe copy: non-finite floats -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    return None if isinstance(x, float) and not math.isfinite(x) else x
