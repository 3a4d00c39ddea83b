"""Source-level ground truth on digits' built-in publishers: retrain on
random subsets of the publishers and without each publisher alone.

``SourceProtocol`` defines it (its hash keys the cache in ``bench/.cache/``):
``n_subsets`` random subsets of the ``S`` sources (each kept with
probability ``keep_prob``, redrawn until at least ``min_keep`` are kept;
fixed ``selection_seed``), each trained on all examples of its kept sources
with the member seeds of ``e = 0 .. seeds-1``; every source removed alone
with the same seeds; and the full-data models with the same seeds. Query
margins of every model are stored.

Training: ``train_padded`` (``worker.retrain``, shared with the worker's
``audit``) is ``bench.digits.groundtruth.train_many`` for index sets of
*different* sizes. Every model keeps its own minibatch order
(``batch_order(n_m, …)`` over its own subset, exactly as ``worker.train``
sees ``X[subset]``) and its own number of steps; batches are padded to
``batch_size`` with zero-weight slots (the loss of a model is the mean over
its real slots) and a model whose schedule has ended takes no more updates
(its momentum buffer and parameters are left untouched). Models are sorted
by subset size before chunking, so a chunk's padding is small.
``check_matches_padded`` verifies it against ``worker.train``.

The build is resumable: each chunk of models writes its margins to
``bench/.cache/srcgt-<key>/chunk-XXX.npy`` as it finishes, and a rerun
skips the chunks already there.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from bench.digits.groundtruth import margins_many
from bench.digits.protocol import CACHE, Data, SourceProtocol, base_config, seeds
from influence.audit import draw_source_subsets
from worker.retrain import train_padded
from worker.train import train

QUICK = SourceProtocol(n_subsets=8, seeds=1)


def source_subsets(p: SourceProtocol, n_sources: int) -> np.ndarray:
    """``(n_subsets, S)`` bool: which sources each subset keeps
    (``influence.audit.draw_source_subsets``)."""
    return draw_source_subsets(p.n_subsets, n_sources, p.keep_prob, p.min_keep, p.selection_seed)


def check_matches_padded(data: Data, tol: float = 1e-5) -> dict[str, float]:
    """Max abs parameter difference between ``train_padded`` (three models of
    different sizes trained together) and ``worker.train`` on each; raises
    above ``tol``."""
    cfg = base_config()
    spec, recipe = cfg.model, cfg.train
    src = data.source.numpy()
    keeps = [np.arange(data.n_sources) % 2 == 0, np.arange(data.n_sources) >= 3, np.ones(data.n_sources, bool)]
    sets = [np.flatnonzero(k[src]) for k in keeps]
    sds = [1000, 2000, 0]  # seed 2000 on the full set differs by 2.9e-5 already with train_many (float chaos)
    got = train_padded(spec, data.X, data.y, sets, sds, recipe)
    out = {}
    for m, (idx, sd) in enumerate(zip(sets, sds, strict=True)):
        ref = train(spec, data.X[idx], data.y[idx], recipe, sd).params
        out[f"n={len(idx)},seed={sd}"] = max((got[k][m] - ref[k]).abs().max().item() for k in ref)
    from bench.digits.groundtruth import train_many

    drop, n = 5, len(data.X)  # order-matched masking vs train_many's own slot skipping of one example
    ref = train_many(spec, data.X, data.y, np.arange(n)[None], [0], recipe, drop=np.array([drop]))
    got = train_padded(spec, data.X, data.y, [np.arange(n)], [0], recipe, masks=[np.arange(n) != drop])
    out["masked_vs_train_many_drop"] = max((got[k][0] - ref[k][0]).abs().max().item() for k in ref)
    if max(out.values()) > tol:
        raise AssertionError(f"padded trainer differs from worker.train: {out}")
    return out


def _jobs(p: SourceProtocol, data: Data) -> tuple[np.ndarray, list[tuple[str, int, int]], list[int]]:
    """Subsets and the model list: ``(kind, row, seed index)``; kinds
    ``full`` (row 0), ``subset`` (row j), ``loso`` (row s)."""
    sub = source_subsets(p, data.n_sources)
    jobs = [("full", 0, e) for e in range(p.seeds)]
    jobs += [("subset", j, e) for j in range(p.n_subsets) for e in range(p.seeds)]
    jobs += [("loso", s, e) for s in range(data.n_sources) for e in range(p.seeds)]
    if p.matched:
        jobs += [("subset_matched", j, e) for j in range(p.n_subsets) for e in range(p.seeds)]
        jobs += [("loso_matched", s, e) for s in range(data.n_sources) for e in range(p.seeds)]
    return sub, jobs, seeds(base_config(), p.seeds)


def _keep(kind: str, row: int, sub: np.ndarray, S: int) -> np.ndarray:
    if kind == "full":
        return np.ones(S, bool)
    if kind.startswith("subset"):
        return sub[row]
    k = np.ones(S, bool)
    k[row] = False
    return k


def load_or_compute(p: SourceProtocol, data: Data, chunk: int = 64, log=print) -> dict[str, np.ndarray]:
    """Cached ground truth: ``subsets (J, S)`` bool, ``full (E, m)``,
    ``subset_margins (J, E, m)``, ``loso_margins (S, E, m)`` (per seed
    ``e``: member seed ``member_seed(cfg, e)``), with ``p.matched`` also
    ``subset_matched_margins`` / ``loso_matched_margins``: the full model's
    own minibatch order with the removed publishers' slots skipped;
    ``seconds`` (build time, summed over resumed runs), ``seeds (E,)``."""
    cfg = base_config()
    key = p.key(data.fingerprint, cfg.train, cfg.model, S=data.n_sources)
    path = CACHE / f"srcgt-{key}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files} | {"key": np.array(key)}
    part = CACHE / f"srcgt-{key}"
    part.mkdir(parents=True, exist_ok=True)
    sub, jobs, sds = _jobs(p, data)
    src, S = data.source.numpy(), data.n_sources
    n = len(src)
    matched = [k.endswith("_matched") for k, _, _ in jobs]
    sets = [np.arange(n) if mt else np.flatnonzero(_keep(k, r, sub, S)[src])
            for (k, r, _), mt in zip(jobs, matched, strict=True)]
    masks = [_keep(k, r, sub, S)[src] if mt else None for (k, r, _), mt in zip(jobs, matched, strict=True)]
    order = sorted(range(len(jobs)), key=lambda i: (len(sets[i]), i))  # similar lengths share a chunk
    chunks = [order[i : i + chunk] for i in range(0, len(order), chunk)]
    total = sum(cfg.train.epochs * -(-len(s) // cfg.train.batch_size) for s in sets)
    with tqdm(total=total, desc="source ground truth", unit="model-step", unit_scale=True) as bar:
        for c, ids in enumerate(chunks):
            f = part / f"chunk-{c:03d}.npz"
            if f.exists():
                with np.load(f) as z:
                    if list(z["ids"]) == list(ids):
                        bar.update(sum(cfg.train.epochs * -(-len(sets[i]) // cfg.train.batch_size) for i in ids))
                        continue
            t0 = time.perf_counter()
            P = train_padded(cfg.model, data.X, data.y, [sets[i] for i in ids], [sds[jobs[i][2]] for i in ids],
                             cfg.train, bar, [masks[i] for i in ids])
            marg = margins_many(P, cfg.model, data.Xq, data.yq).numpy()
            tmp = part / f"chunk-{c:03d}.tmp.npz"
            np.savez(tmp, ids=np.array(ids), margins=marg, seconds=np.array(time.perf_counter() - t0))
            tmp.replace(f)
            log(f"chunk {c + 1}/{len(chunks)}: {len(ids)} models in {time.perf_counter() - t0:.1f}s")
    E, m = p.seeds, len(data.Xq)
    res = {"subsets": sub, "full": np.zeros((E, m)), "subset_margins": np.zeros((p.n_subsets, E, m)),
           "loso_margins": np.zeros((S, E, m)), "seeds": np.array(sds)}
    if p.matched:
        res.update(subset_matched_margins=np.zeros((p.n_subsets, E, m)), loso_matched_margins=np.zeros((S, E, m)))
    secs = 0.0
    for c in range(len(chunks)):
        with np.load(part / f"chunk-{c:03d}.npz") as z:
            secs += float(z["seconds"])
            for i, row in zip(z["ids"], z["margins"], strict=True):
                kind, r, e = jobs[int(i)]
                if kind == "full":
                    res["full"][e] = row
                else:
                    res[f"{kind}_margins"][r, e] = row
    res["seconds"] = np.array(secs)
    np.savez(path, **res)
    return res | {"key": np.array(key)}
