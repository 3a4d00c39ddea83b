"""``fa-worker audit`` of a text store (``model.kind == "gpt"``): the same
checks as the MLP audit (``worker.audit``), with language models retrained.

For the current version of a store built from the shipped Brown corpus
(publication or genre sources) or from a JSONL file still where the build
read it (same sha256): draw ``subsets`` random subsets of the
sources, take the ``loso`` largest sources (by training documents; all of
them when ``loso`` ≥ S, e.g. leave-one-genre-out) and retrain, with the
protocol's recipe (``worker.lm_train.train_lm``: the very run that built
the store's members), one GPT per subset, per left-out source and the
full-data model, for the member seeds ``recipe.seed + e``, ``e < seeds``; a
subset keeps the training blocks of its sources' documents. On ``queries``
held-out windows of 64 targets (``LMCorpus.queries``, ``query_seed``) the
store's per-source scores ``τ (m, S)`` (``TextAttributor.score``) are
compared with the retrained outputs ``f`` = mean log-probability of the
window (kept in ``outputs``: ``keep (J, S)``, ``loso_index (L,)``, ``full
(E, m)``, ``subset (J, E, m)``, ``loso (L, E, m)``, so other methods can be
scored on the same truth: ``bench.lm_source_quality``) by ``influence.audit`` (``worker.audit.metrics``): source-level
LDS, leave-one-source-out Pearson / Spearman, top-1 agreement, what-if
accuracy, with ``n`` = the store's training targets (``data.n_targets``).

Cost: one GPT training per model (about 25–60 s each on this 2-core
machine at 1 thread): ``(1 + subsets + loso) × seeds`` of them.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from influence.audit import draw_source_subsets, truth_noise
from influence.errors import StoreError
from influence.store import Store
from influence.text.attributor import TextAttributor
from influence.text.gpt import GPT, sequence_logprob

from .lm_train import train_lm

SCHEMA = 1


def _corpus(store: Store):
    """The corpus the store was built from (the shipped Brown corpus, or a
    JSONL file still at its path with the sha256 of the build), checked
    document by document."""
    from influence.text.corpus import brown_corpus
    from influence.text.jsonl import load_jsonl_corpus

    man = store.manifest
    path = man.data.get("path")
    if path is not None:
        f = Path(path)
        if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != man.data.get("sha256"):
            raise StoreError(f"{store.path}: it was built from {path}, which is gone or has changed since (sha256); "
                             "the audit retrains on the very corpus of the build")
        corpus = load_jsonl_corpus(f)
    elif man.data.get("name") == "brown":
        corpus = brown_corpus()
    else:
        raise StoreError(f"{store.path}: its training corpus is not recorded (built before stores kept their "
                         "JSONL path); rebuild it to audit it")
    level = man.data.get("level")
    docs = json.loads(store.assets["documents.json"].decode())
    if [str(d["id"]) for d in docs] != list(corpus.train_ids) or level not in corpus.source_ids \
            or corpus.source_ids[level] != man.source_ids:
        raise StoreError(f"{store.path}: its documents or sources are not those of the corpus it names")
    return corpus


def _outputs(spec, params: dict, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return sequence_logprob(GPT(spec, seed=None), x, params).double().numpy()


def compute_text_audit(store: Store, s, log=lambda msg: None, progress: bool = True) -> dict:
    """Run the audit of a loaded text store version; returns ``audit.json``'s dict."""
    from .audit import _finite, metrics

    t0 = time.perf_counter()
    man, spec = store.manifest, store.manifest.model
    S, n = len(man.source_ids), int(man.data["n_targets"])
    if S < 3:
        raise StoreError(f"{store.path}: an audit needs at least 3 sources, the store has {S}")
    corpus = _corpus(store)
    doc_source = np.asarray(man.example_source, dtype=np.int64)
    block_source = doc_source[corpus.block_document.numpy()]
    x, _, _ = corpus.queries(s.queries, seed=s.query_seed)
    keep = draw_source_subsets(s.subsets, S, s.keep_prob, min(s.min_keep, S), s.selection_seed)
    counts = np.bincount(doc_source, minlength=S)
    loso_idx = np.sort(np.argsort(-counts, kind="stable")[: min(s.loso, S)])
    seeds = [int(man.recipe.get("seed", 0)) + e for e in range(s.seeds)]  # worker.lm_pipeline: train.seed + e
    masks = [("full", 0, np.ones(S, bool))] + [("subset", j, k) for j, k in enumerate(keep)]
    masks += [("loso", i, np.arange(S) != src) for i, src in enumerate(loso_idx)]
    log(f"retraining {len(masks) * len(seeds)} language models ({len(keep)} subsets, {len(loso_idx)} left-out "
        f"sources, full; {len(seeds)} seed(s)) on {corpus.blocks.shape[0]} blocks")
    out = {"full": np.zeros((len(seeds), len(x))), "subset": np.zeros((len(keep), len(seeds), len(x))),
           "loso": np.zeros((len(loso_idx), len(seeds), len(x)))}
    t_data = time.perf_counter()
    bar = tqdm(total=len(masks) * len(seeds), desc="audit: retrain gpt", unit="model", disable=not progress)
    done = 0
    for kind, r, k in masks:
        blocks = np.flatnonzero(k[block_source])
        for e, seed in enumerate(seeds):
            params, _ = train_lm(spec, corpus.blocks, None if kind == "full" else blocks, seed, threads=s.threads)
            f = _outputs(spec, params, x)
            if kind == "full":
                out["full"][e] = f
            else:
                out[kind][r, e] = f
            bar.update()
            done += 1
            log(f"retrained {done}/{len(masks) * len(seeds)}: {kind} {r}, seed {seed}")
    bar.close()
    t_train = time.perf_counter()
    att = TextAttributor(store, "cpu")
    tau = att.window_sources(x).double().numpy()
    k = min(len(seeds), man.members)
    own = np.stack([_outputs(spec, att.params[e], x) for e in range(k)])
    t_read = time.perf_counter()
    res = metrics(tau, n, keep, loso_idx, out["full"], out["subset"], out["loso"])
    truth = {**res.pop("_truth"), "noise": truth_noise(out["full"], out["loso"], out["subset"]),
             "full_vs_store_output_max_abs": float(np.abs(own - out["full"][:k]).max())}
    t_end = time.perf_counter()
    settings = {**asdict(s), "query_set": f"held-out windows of {x.shape[1] - 1} targets: {len(x)}",
                "n_train_targets": n,
                "n_sources": S, "loso_sources": [man.source_ids[i] for i in loso_idx], "member_seeds": seeds,
                "models_trained": len(masks) * len(seeds), "recipe": man.recipe,
                "output": "logprob (mean log-probability of the window's 64 targets)"}
    audit = {"schema": SCHEMA, "audited_version": man.version,
             "content_version": ((man.extra or {}).get("audit") or {}).get("content_version") or man.version,
             "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "store_kind": man.model.kind,
             "source_level": man.data.get("level"), "settings": settings, "metrics": res, "truth": truth,
             "outputs": {"keep": keep.tolist(), "loso_index": loso_idx.tolist(), "full": out["full"].tolist(),
                         "subset": out["subset"].tolist(), "loso": out["loso"].tolist()},
             "durations_s": {"data": t_data - t0, "train": t_train - t_data, "readout": t_read - t_train,
                             "metrics": t_end - t_read, "total": t_end - t0}}
    return _finite(audit)
