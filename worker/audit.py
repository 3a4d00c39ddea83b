"""``fa-worker audit``: check a store's per-source scores against real
retraining, and write the result into the store. Text stores: the same
metrics with language models retrained (``worker.audit_text``).

For the current version of an MLP store: draw ``subsets`` random subsets of
the sources (each kept with probability ``keep_prob``), take the ``loso``
largest sources for leave-one-source-out, and retrain, with the store's own
recipe (manifest ``recipe``, ``model``) on its own training data, one model
per subset, per left-out source and the full-data model, each with the
member seeds ``recipe.seed + 1000·e`` for ``e < seeds`` (``worker.retrain``:
the exact semantics of ``worker.train``). On a held-out query sample (the
digits test split for built-in digits stores, else ``--query-file``) the
store's per-source scores ``τ (m, S)`` (ensemble mean, output ``margin`` of
the true label) are compared with the retrained margins by
``influence.audit``: source-level LDS, LOSO Pearson / Spearman, top-1
agreement, and the what-if accuracy (``influence.whatif`` prediction vs the
real change: Pearson, MAE).

The result (``audit.json``, one JSON object)::

    schema 1, audited_version "vNNNNNN", content_version (the build the
    weights come from), created_at (ISO UTC), store_kind "mlp",
    settings {subsets, seeds, queries, loso, keep_prob, min_keep,
              selection_seed, query_seed, matched, query_set, n_train,
              n_sources, loso_sources [ids], member_seeds, models_trained,
              optimizer, threads},
    metrics {source_lds, loso_pearson, loso_spearman, top1_agree,
             whatif_loso {pearson, mae, ...}, whatif_subsets {...}},
    matched {same keys} (with --matched: the full run's own minibatch
             order with the removed sources' slots skipped),
    truth {effect_abs_mean, subset_change_abs_mean, noise {...},
           full_vs_store_margin_max_abs},
    durations_s {data, train, readout, metrics, total}

Non-finite numbers are written as null. The new version (the audited one
plus ``audit.json``, ``extra.audit`` in its manifest) is published by
``influence.store.republish`` only once everything is computed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from influence import registry
from influence.audit import draw_source_subsets, truth_noise
from influence.datasets.vectors import Dataset, builtin_split, load_query_file
from influence.errors import DataError, StoreError
from influence.mlp.attributor import VectorAttributor
from influence.mlp.readout import mlp_forward
from influence.outputs import output
from influence.store import AUDIT_ASSET, Store, current_version, open_store, read_manifest

from .audit_common import SCHEMA, AuditSettings, finite, metrics
from .config import ConfigError, TrainConfig
from .publishing import republish
from .retrain import margins_stacked, train_models, train_padded


def _fingerprint(X: np.ndarray, y: np.ndarray, store: Store) -> str:
    man = store.manifest
    return Dataset(X, y, np.asarray(man.example_source, dtype=np.int64), man.source_ids, man.classes).fingerprint()


def builtin_digits(store: Store) -> tuple[np.ndarray, np.ndarray] | None:
    """The built-in training prefix ``(X (n, d), y (n,))`` the store's manifest names
    (``influence.datasets.vectors.builtin_split``) when it is exactly its training data (by
    fingerprint), else None."""
    man = store.manifest
    split = builtin_split(man.data.get("name"), man.model.in_dim)
    if split is None:
        return None
    X, _, y, _ = split
    n = len(man.example_source)
    if n > len(X) or _fingerprint(X[:n], y[:n], store) != man.data.get("fingerprint"):
        return None
    return X[:n], y[:n]


def training_data(store: Store) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``X (n, d) float32, y (n,) int64, source (n,) int64``: the store's
    ``training.safetensors`` or, without it, the built-in digits data;
    either must match the manifest's data fingerprint."""
    man, where = store.manifest, store.path / "manifest.json"
    if store.X is not None:
        X, y = store.X.float().numpy(), store.y.long().numpy()
        if _fingerprint(X, y, store) != man.data.get("fingerprint"):
            raise StoreError(f"{store.path}/training.safetensors: does not match the data fingerprint in {where}")
    elif (dig := builtin_digits(store)) is not None:
        X, y = dig
    else:
        raise StoreError(f"{store.path}: holds no training data (store.include_training_data=false) and its "
                         f"data ({man.data.get('name')!r}) is not the built-in digits set; rebuild with "
                         "store.include_training_data=true to audit it")
    return torch.from_numpy(X), torch.from_numpy(y), np.asarray(man.example_source, dtype=np.int64)


def query_sample(store: Store, s: AuditSettings, query_file: Path | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Held-out labelled queries ``Xq (m, d)``, ``yq (m,)`` (at most
    ``s.queries``, drawn with ``s.query_seed``) and where they come from."""
    man = store.manifest
    if query_file is not None:
        X, y = load_query_file(query_file, man.model.in_dim, man.classes)
        if y is None:
            raise DataError(query_file, "audit queries need their labels (a 'y' array or a label column)")
        desc = f"{query_file}"
    elif builtin_digits(store) is not None:
        _, X, _, y = builtin_split(man.data.get("name"), man.model.in_dim)
        desc = f"{man.data.get('name')} test split"
    else:
        raise StoreError(f"{store.path}: its data ({man.data.get('name')!r}) has no built-in held-out split; "
                         "pass --query-file FILE with held-out labelled examples")
    idx = np.arange(len(X))
    if len(X) > s.queries:
        idx = np.sort(np.random.default_rng(s.query_seed).choice(len(X), s.queries, replace=False))
    return torch.from_numpy(X[idx]), torch.from_numpy(y[idx]), f"{desc}: {len(idx)} of {len(X)}"


def _jobs(keep: np.ndarray, loso_idx: np.ndarray, source: np.ndarray, E: int, matched: bool):
    """Models to train: ``(what, row, e, index set, mask or None)``."""
    S, n = keep.shape[1], len(source)
    rows = [("full", 0, np.ones(S, bool))] + [("subset", j, k) for j, k in enumerate(keep)]
    rows += [("loso", i, np.arange(S) != s) for i, s in enumerate(loso_idx)]
    jobs = [(what, r, e, np.flatnonzero(k[source]), None) for what, r, k in rows for e in range(E)]
    if matched:
        jobs += [(f"{what}_matched", r, e, np.arange(n), k[source]) for what, r, k in rows[1:] for e in range(E)]
    return jobs


def ground_truth(spec, recipe: TrainConfig, X, y, source: np.ndarray, keep: np.ndarray, loso_idx: np.ndarray,
                 seeds: list[int], Xq, yq, matched: bool = False) -> dict[str, np.ndarray]:
    """Query margins of the retrained models: ``full (E, m)``, ``subset
    (J, E, m)``, ``loso (L, E, m)`` (and ``*_matched`` with ``matched``)."""
    E, m = len(seeds), len(yq)
    jobs = _jobs(keep, loso_idx, source, E, matched)
    if any(len(j[3]) == 0 for j in jobs):
        raise StoreError("a retraining subset keeps no training examples (sources without examples)")
    plain = [j for j in jobs if j[4] is None]
    P = train_models(spec, X, y, [j[3] for j in plain], [seeds[j[2]] for j in plain], recipe)
    marg = list(margins_stacked(P, spec, Xq, yq).numpy())
    if matched:
        mj = [j for j in jobs if j[4] is not None]
        P = train_padded(spec, X, y, [j[3] for j in mj], [seeds[j[2]] for j in mj], recipe,
                         masks=[j[4] for j in mj])
        marg += list(margins_stacked(P, spec, Xq, yq).numpy())
    out = {"full": np.zeros((E, m))}
    for what, rows in (("subset", len(keep)), ("loso", len(loso_idx))):
        for suf in ("", "_matched") if matched else ("",):
            out[what + suf] = np.zeros((rows, E, m))
    for (what, r, e, _, _), row in zip(plain + [j for j in jobs if j[4] is not None], marg, strict=True):
        if what == "full":
            out["full"][e] = row
        else:
            out[what][r, e] = row
    return out


def store_margins(store: Store, Xq: torch.Tensor, yq: torch.Tensor, k: int) -> np.ndarray:
    """``(k, m)`` margins of the store's first ``k`` members on the queries."""
    with torch.no_grad():
        return np.stack([output(mlp_forward({name: v.float() for name, v in p.items()}, store.manifest.model,
                                            Xq)[0], yq, "margin").numpy() for p in store.params[:k]])


def compute_audit(store: Store, s: AuditSettings, query_file: Path | None = None, log=lambda msg: None) -> dict:
    """Run the audit of a loaded MLP store version; returns ``audit.json``'s dict."""
    t0 = time.perf_counter()
    man = store.manifest
    S, n = len(man.source_ids), len(man.example_source)
    if S < 3:
        raise StoreError(f"{store.path}: an audit needs at least 3 sources, the store has {S}")
    recipe = TrainConfig.model_validate(man.recipe)
    X, y, source = training_data(store)
    Xq, yq, qdesc = query_sample(store, s, query_file)
    if s.matched and recipe.optimizer != "sgd":
        raise ConfigError(f"--matched: needs an SGD recipe (the store's is {recipe.optimizer!r})")
    keep = draw_source_subsets(s.subsets, S, s.keep_prob, min(s.min_keep, S), s.selection_seed)
    counts = np.bincount(source, minlength=S)
    loso_idx = np.sort(np.argsort(-counts, kind="stable")[: min(s.loso, S)])
    seeds = [registry.of(man.model).member_seed(recipe.seed, e) for e in range(s.seeds)]  # the build's members
    t_data = time.perf_counter()
    models = (1 + len(keep) + len(loso_idx)) * s.seeds + (len(keep) + len(loso_idx)) * s.seeds * s.matched
    log(f"retraining {models} models ({len(keep)} subsets, {len(loso_idx)} left-out sources, full; "
        f"{s.seeds} seed(s)) on {n} examples")
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        gt = ground_truth(man.model, recipe, X, y, source, keep, loso_idx, seeds, Xq, yq, s.matched)
    finally:
        torch.set_num_threads(threads)
    t_train = time.perf_counter()
    tau = VectorAttributor(store, "cpu").score(Xq, yq, "margin", examples=False).sources.double().numpy()
    k = min(s.seeds, man.members)
    own = store_margins(store, Xq, yq, k)
    t_read = time.perf_counter()
    res = metrics(tau, n, keep, loso_idx, gt["full"], gt["subset"], gt["loso"])
    truth = {**res.pop("_truth"), "noise": truth_noise(gt["full"], gt["loso"], gt["subset"]),
             "full_vs_store_margin_max_abs": float(np.abs(own - gt["full"][:k]).max())}
    matched = None
    if s.matched:
        matched = metrics(tau, n, keep, loso_idx, gt["full"], gt["subset_matched"], gt["loso_matched"])
        truth["matched"] = {**matched.pop("_truth"),
                            "noise": truth_noise(gt["full"], gt["loso_matched"], gt["subset_matched"])}
    t_end = time.perf_counter()
    content = (man.extra.get("audit") or {}).get("content_version") or man.version
    settings = {**asdict(s), "query_set": qdesc, "n_train": n, "n_sources": S,
                "loso_sources": [man.source_ids[i] for i in loso_idx], "member_seeds": seeds,
                "models_trained": models, "optimizer": recipe.optimizer, "output": "margin (true label)"}
    out = {"schema": SCHEMA, "audited_version": man.version, "content_version": content,
           "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "store_kind": man.model.kind,
           "settings": settings, "metrics": res, "truth": truth,
           "durations_s": {"data": t_data - t0, "train": t_train - t_data, "readout": t_read - t_train,
                           "metrics": t_end - t_read, "total": t_end - t0}}
    if matched is not None:
        out["matched"] = matched
    return finite(out)


def run_audit(root: str | Path, s: AuditSettings, query_file: Path | None = None, keep: int = 3,
              log=lambda msg: None) -> tuple[Path, dict]:
    """Audit ``root``'s current version and publish it plus ``audit.json`` as
    the new current version. Returns (new version dir, the audit)."""
    s.check()
    if keep < 2:
        raise ConfigError(f"--keep: must be at least 2 (the audited version is kept), got {keep}")
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"{root}: no such store directory")
    version = current_version(root)
    text = registry.of(read_manifest(root / "versions" / version).model).text
    if text and s.matched:
        raise ConfigError("--matched: not supported for text stores")
    store = open_store(root, version)
    if text:
        from .audit_text import compute_text_audit

        audit = compute_text_audit(store, s, log, progress=False, query_file=query_file)
    else:
        audit = compute_audit(store, s, query_file, log)
    blob = (json.dumps(audit, indent=1, allow_nan=False) + "\n").encode()
    note = {k: audit[k] for k in ("audited_version", "content_version", "created_at")}
    path = republish(root, version, {AUDIT_ASSET: blob}, {"audit": {**note, "file": AUDIT_ASSET}}, keep=keep)
    return path, audit
