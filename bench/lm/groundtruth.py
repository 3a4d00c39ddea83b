"""Retraining ground truth of the language-model benchmark
(``docs/lm-protocol.md``, settings in :mod:`bench.lm.protocol`).

Runs, in this order (the most useful first, so a partial result is usable):

1. ``full``: the full-data models, member ``e`` with seed ``2 + e``; their
   parameters are cached too (``full-e{e}.pt``) for the baselines;
2. ``doc``: document subset ``j`` with every seed of ``doc_seeds`` before
   subset ``j + 1``;
3. ``genre``: genre subset ``g`` with every seed of ``genre_seeds``.

Every finished run writes one small file ``<kind>-<index>-s<seed>.npz`` in
``bench/.cache/lm/<key>/`` (``outputs (m,) float64`` = f(q) of every query,
``seconds`` of training, the subset), atomically; a killed computation
resumes where it stopped.

    python -m bench.lm.groundtruth [--full 5 --doc-subsets 48 --genre-subsets 24 --seeds 2 --genre-seeds 1]
    python -m bench.lm.groundtruth --status
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.lm.protocol import DEFAULT, SPEC, LMProtocol, corpus, doc_blocks, genre_docs, queries
from influence.text.corpus import all_windows
from influence.text.gpt import sequence_logprob
from worker.lm_train import train_lm

DEFAULT_FULL = 5
DEFAULT_DOC = 48
DEFAULT_GENRE = 24


def run_path(p: LMProtocol, kind: str, index: int, seed: int) -> Path:
    if kind == "full":
        return p.cache_dir() / f"full-e{index}.npz"
    return p.cache_dir() / f"{kind}-{index:03d}-s{seed}.npz"


def full_params_path(p: LMProtocol, e: int) -> Path:
    return p.cache_dir() / f"full-e{e}.pt"


def plan(p: LMProtocol, n_full: int, n_doc: int, n_genre: int, doc_seeds, genre_seeds) -> list[tuple[str, int, int]]:
    out = [("full", e, p.full_seed(e)) for e in range(n_full)]
    out += [("doc", j, s) for j in range(n_doc) for s in doc_seeds]
    out += [("genre", g, s) for g in range(n_genre) for s in genre_seeds]
    return out


@torch.no_grad()
def evaluate(params: dict[str, torch.Tensor], x: torch.Tensor, batch: int = 256) -> np.ndarray:
    model = SPEC.build(0)
    model.load_state_dict(params)
    model.eval()
    return np.concatenate([sequence_logprob(model, x[i : i + batch]).double().numpy() for i in range(0, len(x), batch)])


def _save_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def run_one(p: LMProtocol, kind: str, index: int, seed: int) -> float:
    """Train one run and cache it; returns its training seconds."""
    c = corpus()
    if kind == "full":
        keep, subset = None, np.arange(450)
    elif kind == "doc":
        subset = p.doc_subset(index)
        keep = doc_blocks(subset, c)
    elif kind == "genre":
        subset = p.genre_subset(index)
        keep = doc_blocks(genre_docs(subset, c), c)
    else:
        raise ValueError(kind)
    t0 = time.perf_counter()
    params, stats = train_lm(SPEC, c.blocks, keep=keep, seed=seed)
    train_s = time.perf_counter() - t0
    out = evaluate(params, queries(p))
    extra = {}
    if kind == "full":
        ppl = float(np.exp(-evaluate(params, all_windows(c.heldout_tokens)).mean()))
        extra["heldout_ppl"] = np.float64(ppl)
        tmp = full_params_path(p, index).with_suffix(".pt.tmp")
        torch.save(params, tmp)
        os.replace(tmp, full_params_path(p, index))
    _save_npz(
        run_path(p, kind, index, seed),
        outputs=out,
        seconds=np.float64(train_s),
        wall=np.float64(time.perf_counter() - t0),
        subset=subset,
        seed=np.int64(seed),
        final_loss=np.float64(stats["final_loss"]),
        n_blocks=np.int64(stats["n_blocks"]),
        **extra,
    )
    return train_s


def status(p: LMProtocol, runs: list[tuple[str, int, int]]) -> str:
    done = [r for r in runs if run_path(p, *r).exists()]
    secs = [float(np.load(run_path(p, *r))["wall"]) for r in done]
    lines = [f"cache {p.cache_dir()}", f"runs done {len(done)}/{len(runs)}, {sum(secs):.0f} s of runs"]
    for kind in ("full", "doc", "genre"):
        k_all = [r for r in runs if r[0] == kind]
        k_done = [r for r in done if r[0] == kind]
        s = [float(np.load(run_path(p, *r))["wall"]) for r in k_done]
        complete = len({r[1] for r in k_all} - {r[1] for r in k_all if r not in k_done})
        mean = f", {np.mean(s):.1f} s/run" if s else ""
        lines.append(f"  {kind:5s}: {len(k_done)}/{len(k_all)} runs, {complete} complete subsets/members{mean}")
    gt = load_groundtruth(p, n_full=None)
    if len(gt.doc_targets) >= 3:
        lines.append(f"  seed-2 vs seed-3 Spearman across {len(gt.doc_targets)} doc subsets (mean over queries): "
                     f"{seed_agreement(gt.doc_per_seed):.3f}")
    if len(gt.full_outputs) >= 2:
        lines.append(f"  full members: held-out ppl {np.round(gt.heldout_ppl, 1).tolist()}, mean |f_e - f_e'| "
                     f"(members 0, 1) {np.abs(gt.full_outputs[0] - gt.full_outputs[1]).mean():.4f}")
    left = [r for r in runs if r not in done]
    if left and secs:
        lines.append(f"  next {left[0]}, about {len(left) * np.mean(secs) / 60:.0f} min left at the mean rate")
    return "\n".join(lines)


@dataclass
class GroundTruth:
    doc_subsets: np.ndarray  # (J, 225) sorted doc indices
    doc_targets: np.ndarray  # (J, m) mean f(q) over the doc seeds
    genre_subsets: np.ndarray  # (G, 15) bool
    genre_targets: np.ndarray  # (G, m)
    full_outputs: np.ndarray  # (E, m)
    seconds: float  # total wall seconds of every run loaded
    heldout_ppl: np.ndarray  # (E,)
    doc_per_seed: np.ndarray  # (J, S, m) f(q) of each seed of each document subset
    genre_per_seed: np.ndarray  # (G, S', m)


def load_groundtruth(
    p: LMProtocol = DEFAULT,
    n_full: int | None = None,
    n_doc: int | None = None,
    n_genre: int | None = None,
    doc_seeds: tuple[int, ...] | None = None,
    genre_seeds: tuple[int, ...] | None = None,
) -> GroundTruth:
    """Whatever is complete in the cache: a subset counts once every one of its
    seeds is done; the leading complete prefix of members/subsets is returned
    (``n_*`` caps the count; ``None`` = as many as found)."""
    doc_seeds = p.doc_seeds if doc_seeds is None else doc_seeds
    genre_seeds = p.genre_seeds if genre_seeds is None else genre_seeds
    secs = 0.0

    def collect(kind, seeds, cap):
        nonlocal secs
        subs, tg, extra = [], [], []
        i = 0
        while cap is None or i < cap:
            paths = [run_path(p, kind, i, s) for s in seeds]
            if not all(q.exists() for q in paths):
                break
            zs = [np.load(q) for q in paths]
            secs += sum(float(z["wall"]) for z in zs)
            subs.append(zs[0]["subset"])
            tg.append(np.mean([z["outputs"] for z in zs], axis=0))
            extra.append(np.array([z["outputs"] for z in zs]))
            i += 1
        return subs, tg, extra

    m = p.n_queries
    full_o, ppl = [], []
    e = 0
    while n_full is None or e < n_full:
        q = run_path(p, "full", e, p.full_seed(e))
        if not q.exists():
            break
        z = np.load(q)
        secs += float(z["wall"])
        full_o.append(z["outputs"])
        ppl.append(float(z["heldout_ppl"]))
        e += 1
    ds, dt, dps = collect("doc", doc_seeds, n_doc)
    gs, gt, gps = collect("genre", genre_seeds, n_genre)
    return GroundTruth(
        doc_subsets=np.array(ds, dtype=np.int64).reshape(-1, p.doc_subset_size),
        doc_targets=np.array(dt).reshape(-1, m),
        genre_subsets=np.array(gs, dtype=bool).reshape(-1, 15),
        genre_targets=np.array(gt).reshape(-1, m),
        full_outputs=np.array(full_o).reshape(-1, m),
        seconds=secs,
        heldout_ppl=np.array(ppl),
        doc_per_seed=np.array(dps).reshape(-1, len(doc_seeds), m),
        genre_per_seed=np.array(gps).reshape(-1, len(genre_seeds), m),
    )


def seed_agreement(per_seed: np.ndarray, centred: bool = False) -> float:
    """Mean over queries of the Spearman correlation, across subsets, between
    the outputs of the first two seeds ``(J, S>=2, m)``: how reproducible the
    target is (a rough ceiling for LDS against one seed; the 2-seed mean is
    less noisy)."""
    from scipy.stats import spearmanr

    if per_seed.shape[0] < 3 or per_seed.shape[1] < 2:
        return float("nan")
    a, b = per_seed[:, 0], per_seed[:, 1]
    if centred:
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return float(np.nanmean([spearmanr(a[:, q], b[:, q])[0] for q in range(a.shape[1])]))


def load_full_params(e: int, p: LMProtocol = DEFAULT) -> dict[str, torch.Tensor]:
    return torch.load(full_params_path(p, e), weights_only=True)


def n_full_available(p: LMProtocol = DEFAULT) -> int:
    e = 0
    while full_params_path(p, e).exists() and run_path(p, "full", e, p.full_seed(e)).exists():
        e += 1
    return e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", type=int, default=DEFAULT_FULL)
    ap.add_argument("--doc-subsets", type=int, default=DEFAULT_DOC)
    ap.add_argument("--genre-subsets", type=int, default=DEFAULT_GENRE)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per document subset (2, 3, ...)")
    ap.add_argument("--genre-seeds", type=int, default=1, help="seeds per genre subset (2, 3, ...)")
    ap.add_argument("--status", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    p = DEFAULT
    doc_seeds = tuple(2 + s for s in range(a.seeds))
    genre_seeds = tuple(2 + s for s in range(a.genre_seeds))
    runs = plan(p, a.full, a.doc_subsets, a.genre_subsets, doc_seeds, genre_seeds)
    if a.status:
        print(status(p, runs))
        return 0
    torch.set_num_threads(a.threads)
    p.cache_dir().mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    for k, r in enumerate(runs):
        if run_path(p, *r).exists():
            continue
        s = run_one(p, *r)
        print(f"[{k + 1}/{len(runs)}] {r[0]} {r[1]} seed {r[2]}: {s:.1f} s (total {time.perf_counter() - t_all:.0f} s)",
              flush=True)
    print(status(p, runs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
