"""Fine-tuning ground truth of the ``brown-ft`` benchmark (``ft-protocol.md``;
settings in :mod:`bench.ft.protocol`).

Runs, in this order (the most useful first, so a partial result is usable
at every level):

1. ``base``: f(q) of the base model itself (no fine-tune);
2. ``full``: the full-data fine-tunes, member ``e`` with seed ``2 + e``
   (their LoRA parameters are cached too, for the attributions);
3. document subset ``j`` with every seed of ``doc_seeds``, and after every
   second document subset one genre subset (its first seed);
4. the remaining genre subsets, then further genre seeds (``--genre-seeds 2``).

Every finished run writes one small file ``<kind>-<index>-s<seed>.npz`` in
``bench/results/ft_truth/<key>/`` (``outputs (m,) float64`` = f(q) of every
query, ``seconds`` of fine-tuning, ``wall``, the subset), atomically; a
killed computation resumes where it stopped. Several workers may share the
plan (each run is claimed with a ``.lock`` file holding the worker's pid;
a dead worker's claims are taken over). One thread per run:

    nohup python -m bench.ft.groundtruth --threads 1 > bench/.cache/ft_gt.log 2>&1 &
    python -m bench.ft.groundtruth --status
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
from tqdm.auto import tqdm

from bench.ft.protocol import (
    BASE_DIR,
    DEFAULT,
    N_GENRES,
    RECIPE,
    SPEC,
    FTProtocol,
    blocks,
    doc_blocks,
    genre_docs,
    outputs,
    queries,
)
from bench.lm.groundtruth import seed_agreement

DEFAULT_FULL = 5
DEFAULT_DOC = 48
DEFAULT_GENRE = 24
Run = tuple[str, int, int]


def run_path(p: FTProtocol, kind: str, index: int, seed: int) -> Path:
    if kind == "base":
        return p.truth_dir() / "base.npz"
    if kind == "full":
        return p.truth_dir() / f"full-e{index}.npz"
    return p.truth_dir() / f"{kind}-{index:03d}-s{seed}.npz"


def full_params_path(p: FTProtocol, e: int) -> Path:
    return p.params_dir() / f"full-e{e}.pt"


def plan(p: FTProtocol, n_full: int, n_doc: int, n_genre: int, doc_seeds, genre_seeds) -> list[Run]:
    out: list[Run] = [("base", 0, -1)] + [("full", e, p.full_seed(e)) for e in range(n_full)]
    g = 0
    for j in range(n_doc):
        out += [("doc", j, s) for s in doc_seeds]
        if j % 2 == 1 and g < n_genre:
            out.append(("genre", g, genre_seeds[0]))
            g += 1
    out += [("genre", k, genre_seeds[0]) for k in range(g, n_genre)]
    out += [("genre", k, s) for s in genre_seeds[1:] for k in range(n_genre)]
    return out


def _save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def subset_of(p: FTProtocol, kind: str, index: int) -> tuple[np.ndarray | None, np.ndarray]:
    """``(keep: global block indices or None, subset: doc indices or genre mask)``."""
    if kind == "full":
        return None, np.arange(450)
    if kind == "doc":
        s = p.doc_subset(index)
        return doc_blocks(s), s
    if kind == "genre":
        s = p.genre_subset(index)
        return doc_blocks(genre_docs(s)), s
    raise ValueError(kind)


def finetune_full(p: FTProtocol, e: int, threads: int = 1):
    """Member ``e``'s fine-tune (model, LoRA params, stats); the params cached."""
    from worker.hf_train import finetune

    model, params, stats = finetune(BASE_DIR, SPEC, blocks()[0], None, p.full_seed(e), RECIPE, threads=threads)
    path = full_params_path(p, e)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(params, path.with_suffix(".pt.tmp"))
    os.replace(path.with_suffix(".pt.tmp"), path)
    return model, params, stats


def run_one(p: FTProtocol, kind: str, index: int, seed: int, threads: int = 1) -> float:
    """Fine-tune one run, evaluate f(q), cache it; returns its fine-tuning seconds."""
    from influence.hf.loader import load_model
    from influence.hf.model import HFCausalLM, context_of
    from worker.hf_train import finetune

    x, mask = queries(p)
    t0 = time.perf_counter()
    if kind == "base":
        base = load_model(BASE_DIR)
        out = outputs(HFCausalLM(base, context_of(base.config)), x, mask)
        _save_npz(run_path(p, kind, index, seed), outputs=out, seconds=np.float64(0.0),
                  wall=np.float64(time.perf_counter() - t0))
        return 0.0
    keep, subset = subset_of(p, kind, index)
    if kind == "full":
        model, _, stats = finetune_full(p, index, threads)
    else:
        model, _, stats = finetune(BASE_DIR, SPEC, blocks()[0], keep, seed, RECIPE, threads=threads)
    out = outputs(model, x, mask)
    _save_npz(run_path(p, kind, index, seed), outputs=out, seconds=np.float64(stats["seconds"]),
              wall=np.float64(time.perf_counter() - t0), subset=subset, seed=np.int64(seed),
              final_loss=np.float64(stats["final_loss"]), n_blocks=np.int64(stats["n_blocks"]))
    return float(stats["seconds"])


@dataclass
class GroundTruth:
    doc_subsets: np.ndarray  # (J, 225) sorted doc indices
    doc_targets: np.ndarray  # (J, m) mean f(q) over the doc seeds
    genre_subsets: np.ndarray  # (G, 15) bool
    genre_targets: np.ndarray  # (G, m)
    full_outputs: np.ndarray  # (E, m)
    base_outputs: np.ndarray  # (m,) or empty
    seconds: float  # total wall seconds of every run loaded
    doc_per_seed: np.ndarray  # (J, S, m)
    genre_per_seed: np.ndarray  # (G, S', m)

    def split(self, parity: int) -> GroundTruth:
        """The even (0) or odd (1) subsets of both levels: choose settings on one half, report on the other."""
        d, g = slice(parity, None, 2), slice(parity, None, 2)
        return GroundTruth(self.doc_subsets[d], self.doc_targets[d], self.genre_subsets[g], self.genre_targets[g],
                           self.full_outputs, self.base_outputs, self.seconds, self.doc_per_seed[d],
                           self.genre_per_seed[g])


def load_groundtruth(p: FTProtocol = DEFAULT, n_full: int | None = None, n_doc: int | None = None,
                     n_genre: int | None = None, doc_seeds: tuple[int, ...] | None = None,
                     genre_seeds: tuple[int, ...] | None = None) -> GroundTruth:
    """Whatever is complete in the cache: a subset counts once every one of its
    seeds is done; the leading complete prefix is returned (``n_*`` caps it)."""
    doc_seeds = p.doc_seeds if doc_seeds is None else doc_seeds
    genre_seeds = p.genre_seeds if genre_seeds is None else genre_seeds
    secs = 0.0
    m = p.n_queries

    def collect(kind, seeds, cap):
        nonlocal secs
        subs, per = [], []
        i = 0
        while cap is None or i < cap:
            paths = [run_path(p, kind, i, s) for s in seeds]
            if not all(q.exists() for q in paths):
                break
            zs = [np.load(q) for q in paths]
            secs += sum(float(z["wall"]) for z in zs)
            subs.append(zs[0]["subset"])
            per.append(np.array([z["outputs"] for z in zs]))
            i += 1
        return subs, np.array(per).reshape(-1, len(seeds), m)

    full_o, e = [], 0
    while (n_full is None or e < n_full) and run_path(p, "full", e, 0).exists():
        z = np.load(run_path(p, "full", e, 0))
        secs += float(z["wall"])
        full_o.append(z["outputs"])
        e += 1
    bp = run_path(p, "base", 0, -1)
    base = np.load(bp)["outputs"] if bp.exists() else np.zeros(0)
    ds, dps = collect("doc", doc_seeds, n_doc)
    gs, gps = collect("genre", genre_seeds, n_genre)
    return GroundTruth(
        doc_subsets=np.array(ds, dtype=np.int64).reshape(-1, p.doc_subset_size), doc_targets=dps.mean(1),
        genre_subsets=np.array(gs, dtype=bool).reshape(-1, N_GENRES), genre_targets=gps.mean(1),
        full_outputs=np.array(full_o).reshape(-1, m), base_outputs=base, seconds=secs,
        doc_per_seed=dps, genre_per_seed=gps)


def sanity(gt: GroundTruth) -> dict:
    """The protocol's sanity figures (what to expect: base f ≈ −5.03, a full
    fine-tune moves f by ±0.016 (mean +0.002), subset spread ≈ 2 × seed noise,
    seed agreement ≈ 0.7)."""
    out: dict = {}
    if len(gt.base_outputs):
        out["base_f_mean"] = float(gt.base_outputs.mean())
    if len(gt.full_outputs) and len(gt.base_outputs):
        d = gt.full_outputs - gt.base_outputs
        out["full_minus_base_abs_mean"] = float(np.abs(d).mean())
        out["full_minus_base_mean"] = float(d.mean())
        out["full_minus_base_sd"] = float(d.std())
    if len(gt.full_outputs) >= 2:
        out["full_member_abs_diff"] = float(np.abs(gt.full_outputs[0] - gt.full_outputs[1]).mean())
    for lvl, per in (("doc", gt.doc_per_seed), ("genre", gt.genre_per_seed)):
        if per.shape[0] >= 3:
            out[f"{lvl}_subsets"] = int(per.shape[0])
            out[f"{lvl}_target_spread_sd"] = float(per.mean(1).std(0).mean())  # per query, across subsets
            if per.shape[1] >= 2:
                out[f"{lvl}_seed_noise_sd"] = float((np.abs(per[:, 0] - per[:, 1]) / np.sqrt(2)).mean())
                out[f"{lvl}_seed_agreement"] = seed_agreement(per)
                out[f"{lvl}_seed_agreement_centred"] = seed_agreement(per, centred=True)
    return out


def status(p: FTProtocol, runs: list[Run]) -> str:
    done = [r for r in runs if run_path(p, *r).exists()]
    secs = [float(np.load(run_path(p, *r))["wall"]) for r in done if r[0] != "base"]
    lines = [f"truth {p.truth_dir()}", f"runs done {len(done)}/{len(runs)}, {sum(secs):.0f} s of runs"]
    for kind in ("full", "doc", "genre"):
        k_all = [r for r in runs if r[0] == kind]
        s = [float(np.load(run_path(p, *r))["wall"]) for r in done if r[0] == kind]
        lines.append(f"  {kind:5s}: {len(s)}/{len(k_all)} runs" + (f", {np.mean(s):.1f} s/run" if s else ""))
    for k, v in sanity(load_groundtruth(p)).items():
        lines.append(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    left = [r for r in runs if r not in done]
    if left and secs:
        lines.append(f"  next {left[0]}, about {len(left) * np.mean(secs) / 60:.0f} min left at the mean rate")
    return "\n".join(lines)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(p: FTProtocol, r: Run) -> Path | None:
    """An exclusive claim on run ``r`` (``<run>.lock`` holding the pid), or ``None`` when it is done or
    claimed by a live process: several workers can share one plan. Stale claims are taken over."""
    path = run_path(p, *r)
    if path.exists():
        return None
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return None
            lock.unlink(missing_ok=True)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return None if path.exists() else lock
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", type=int, default=DEFAULT_FULL)
    ap.add_argument("--doc-subsets", type=int, default=DEFAULT_DOC)
    ap.add_argument("--genre-subsets", type=int, default=DEFAULT_GENRE)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per document subset")
    ap.add_argument("--genre-seeds", type=int, default=1, help="seeds per genre subset")
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
    todo = [r for r in runs if not run_path(p, *r).exists()]
    t_all = time.perf_counter()
    bar = tqdm(todo, desc="ft ground truth", unit="run", mininterval=30)
    for r in bar:  # several workers may share the plan: each run is claimed first (a .lock beside it)
        lock = claim(p, r)
        if lock is None:
            continue
        try:
            s = run_one(p, *r, threads=a.threads)
        finally:
            lock.unlink(missing_ok=True)
        bar.write(f"[{runs.index(r) + 1}/{len(runs)}] {r[0]} {r[1]} seed {r[2]}: {s:.1f} s "
                  f"(total {time.perf_counter() - t_all:.0f} s)")
    print(status(p, runs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
