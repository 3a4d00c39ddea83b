"""Retraining ground truth as many small run files: plan, claim, resume, status and load.

A run is ``(kind, index, seed)``: ``base`` (f(q) before any training on the corpus, where the protocol
has one), ``full`` member ``e`` with seed ``2 + e``, ``doc`` subset ``j`` or ``genre`` subset ``g`` with
one of its seeds. The plan puts the most useful first, so a partial result is usable at every level:
the members, then document subset ``j`` with every seed and, after every second one, one genre subset
(its first seed), then the remaining genre subsets, then further genre seeds.

Every finished run writes one small file ``<kind>-<index>-s<seed>.npz`` (``base.npz``,
``full-e<e>.npz``) in the protocol's ``truth_dir()``: ``outputs (m,) float64`` = f(q) of every query,
``seconds`` of training, ``wall``, the subset, atomically; a killed computation resumes where it
stopped. Several workers may share one plan: each run is claimed first with a ``.lock`` file holding
the worker's pid, and a dead worker's claims are taken over.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.harness.protocol import N_GENRES, SubsetProtocol

Run = tuple[str, int, int]


def run_path(p: SubsetProtocol, kind: str, index: int, seed: int) -> Path:
    if kind == "base":
        return p.truth_dir() / "base.npz"
    if kind == "full":
        return p.truth_dir() / f"full-e{index}.npz"
    return p.truth_dir() / f"{kind}-{index:03d}-s{seed}.npz"


def plan(p: SubsetProtocol, n_full: int, n_doc: int, n_genre: int, doc_seeds, genre_seeds) -> list[Run]:
    out: list[Run] = [("base", 0, -1)] if p.base_run else []
    out += [("full", e, p.full_seed(e)) for e in range(n_full)]
    g = 0
    for j in range(n_doc):
        out += [("doc", j, s) for s in doc_seeds]
        if j % 2 == 1 and g < n_genre:
            out.append(("genre", g, genre_seeds[0]))
            g += 1
    out += [("genre", k, genre_seeds[0]) for k in range(g, n_genre)]
    return out + [("genre", k, s) for s in genre_seeds[1:] for k in range(n_genre)]


def save(path: Path, **arrays) -> None:
    """One run's file, written atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(path: Path) -> Path | None:
    """An exclusive claim on the run whose file is ``path`` (``<file>.lock`` holding the pid), or ``None``
    when it is done or claimed by a live process. Stale claims are taken over."""
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


@dataclass
class GroundTruth:
    doc_subsets: np.ndarray  # (J, doc_subset_size) sorted document indices
    doc_targets: np.ndarray  # (J, m) mean f(q) over the document seeds
    genre_subsets: np.ndarray  # (G, 15) bool
    genre_targets: np.ndarray  # (G, m)
    full_outputs: np.ndarray  # (E, m)
    base_outputs: np.ndarray  # (m,), or empty without a base run
    seconds: float  # total wall seconds of every run loaded
    doc_per_seed: np.ndarray  # (J, S, m) f(q) of each seed of each document subset
    genre_per_seed: np.ndarray  # (G, S', m)
    heldout_ppl: np.ndarray  # (E,) the members' held-out perplexity, where the runs recorded it

    def split(self, parity: int) -> GroundTruth:
        """The even (0) or odd (1) subsets of both levels: choose settings on one half, report on the other."""
        h = slice(parity, None, 2)
        return GroundTruth(self.doc_subsets[h], self.doc_targets[h], self.genre_subsets[h], self.genre_targets[h],
                           self.full_outputs, self.base_outputs, self.seconds, self.doc_per_seed[h],
                           self.genre_per_seed[h], self.heldout_ppl)


def load(p: SubsetProtocol, n_full: int | None = None, n_doc: int | None = None, n_genre: int | None = None,
         doc_seeds: tuple[int, ...] | None = None, genre_seeds: tuple[int, ...] | None = None) -> GroundTruth:
    """Whatever is complete in the run files: a subset counts once every one of its seeds is done; the
    leading complete prefix of members and subsets is returned (``n_*`` caps the count, ``None``: all found)."""
    doc_seeds = p.doc_seeds if doc_seeds is None else doc_seeds
    genre_seeds = p.genre_seeds if genre_seeds is None else genre_seeds
    secs, m = 0.0, p.n_queries

    def collect(kind, seeds, cap):
        nonlocal secs
        subs, per, i = [], [], 0
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

    full, ppl, e = [], [], 0
    while (n_full is None or e < n_full) and run_path(p, "full", e, 0).exists():
        z = np.load(run_path(p, "full", e, 0))
        secs += float(z["wall"])
        full.append(z["outputs"])
        if "heldout_ppl" in z.files:
            ppl.append(float(z["heldout_ppl"]))
        e += 1
    bp = run_path(p, "base", 0, -1)
    base = np.load(bp)["outputs"] if bp.exists() else np.zeros(0)
    ds, dps = collect("doc", doc_seeds, n_doc)
    gs, gps = collect("genre", genre_seeds, n_genre)
    return GroundTruth(
        doc_subsets=np.array(ds, dtype=np.int64).reshape(-1, p.doc_subset_size), doc_targets=dps.mean(1),
        genre_subsets=np.array(gs, dtype=bool).reshape(-1, N_GENRES), genre_targets=gps.mean(1),
        full_outputs=np.array(full).reshape(-1, m), base_outputs=base, seconds=secs, doc_per_seed=dps,
        genre_per_seed=gps, heldout_ppl=np.array(ppl))


def seed_agreement(per_seed: np.ndarray, centred: bool = False) -> float:
    """Mean over queries of the Spearman correlation, across subsets, between the outputs of the first two
    seeds ``(J, S>=2, m)``: how reproducible the target is (a rough ceiling for LDS against one seed; the
    2-seed mean is less noisy)."""
    from scipy.stats import spearmanr

    if per_seed.shape[0] < 3 or per_seed.shape[1] < 2:
        return float("nan")
    a, b = per_seed[:, 0], per_seed[:, 1]
    if centred:
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return float(np.nanmean([spearmanr(a[:, q], b[:, q])[0] for q in range(a.shape[1])]))


def sanity(gt: GroundTruth) -> dict:
    """The protocols' sanity figures: where the truth sits against its own noise (ft-protocol's pilot: base
    f ≈ −5.03, a full fine-tune moves f by ±0.016, subset spread ≈ 2 × seed noise, seed agreement ≈ 0.7)."""
    out: dict = {}
    if len(gt.base_outputs):
        out["base_f_mean"] = float(gt.base_outputs.mean())
    if len(gt.full_outputs) and len(gt.base_outputs):
        d = gt.full_outputs - gt.base_outputs
        out.update(full_minus_base_abs_mean=float(np.abs(d).mean()), full_minus_base_mean=float(d.mean()),
                   full_minus_base_sd=float(d.std()))
    if len(gt.full_outputs) >= 2:
        out["full_member_abs_diff"] = float(np.abs(gt.full_outputs[0] - gt.full_outputs[1]).mean())
    if len(gt.heldout_ppl):
        out["full_heldout_ppl"] = [round(float(x), 1) for x in gt.heldout_ppl]
    for lvl, per in (("doc", gt.doc_per_seed), ("genre", gt.genre_per_seed)):
        if per.shape[0] >= 3:
            out[f"{lvl}_subsets"] = int(per.shape[0])
            out[f"{lvl}_target_spread_sd"] = float(per.mean(1).std(0).mean())  # per query, across subsets
            if per.shape[1] >= 2:
                out[f"{lvl}_seed_noise_sd"] = float((np.abs(per[:, 0] - per[:, 1]) / np.sqrt(2)).mean())
                out[f"{lvl}_seed_agreement"] = seed_agreement(per)
                out[f"{lvl}_seed_agreement_centred"] = seed_agreement(per, centred=True)
    return out


def status(p: SubsetProtocol, runs: list[Run]) -> str:
    done = [r for r in runs if run_path(p, *r).exists()]
    secs = [float(np.load(run_path(p, *r))["wall"]) for r in done if r[0] != "base"]
    lines = [f"truth {p.truth_dir()}", f"runs done {len(done)}/{len(runs)}, {sum(secs):.0f} s of runs"]
    for kind in ("full", "doc", "genre"):
        k_all = [r for r in runs if r[0] == kind]
        s = [float(np.load(run_path(p, *r))["wall"]) for r in done if r[0] == kind]
        lines.append(f"  {kind:5s}: {len(s)}/{len(k_all)} runs" + (f", {np.mean(s):.1f} s/run" if s else ""))
    for k, v in sanity(load(p)).items():
        lines.append(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    left = [r for r in runs if r not in done]
    if left and secs:
        lines.append(f"  next {left[0]}, about {len(left) * np.mean(secs) / 60:.0f} min left at the mean rate")
    return "\n".join(lines)


def main(p: SubsetProtocol, run_one: Callable[..., float], doc: str, argv: list[str] | None = None) -> int:
    """The ground truth's command line: ``--status``, or every run of the plan not yet done, each claimed
    first; ``run_one(p, kind, index, seed, threads)`` trains one run, writes its file and returns its
    training seconds."""
    from tqdm.auto import tqdm

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", type=int, default=5)
    ap.add_argument("--doc-subsets", type=int, default=48)
    ap.add_argument("--genre-subsets", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=2, help="seeds per document subset (2, 3, ...)")
    ap.add_argument("--genre-seeds", type=int, default=1, help="seeds per genre subset (2, 3, ...)")
    ap.add_argument("--status", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    runs = plan(p, a.full, a.doc_subsets, a.genre_subsets, tuple(2 + s for s in range(a.seeds)),
                tuple(2 + s for s in range(a.genre_seeds)))
    if a.status:
        print(status(p, runs))
        return 0
    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    bar = tqdm([r for r in runs if not run_path(p, *r).exists()], desc="ground truth", unit="run", mininterval=30)
    for r in bar:
        lock = claim(run_path(p, *r))
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
