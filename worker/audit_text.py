"""``fa-worker audit`` of a text store (``model.kind`` ``gpt`` or ``hf``): the
same checks as the MLP audit (``worker.audit``), with language models
retrained (``gpt``) or fine-tuned again from the store's base (``hf``).

For the current version of a store built from the shipped Brown corpus
(publication or genre sources) or from a JSONL file still where the build
read it (same sha256): draw ``subsets`` random subsets of the
sources, take the ``loso`` largest sources (by training documents; all of
them when ``loso`` ≥ S, e.g. leave-one-genre-out) and retrain, with the
protocol's recipe (``influence.gpt.train.train_lm``: the very run that built
the store's members), one GPT per subset, per left-out source and the
full-data model, for the member seeds ``recipe.seed + e``, ``e < seeds``; a
subset keeps the training blocks of its sources' documents. On ``queries``
held-out windows of 64 targets (``LMCorpus.queries``, ``query_seed``) the
store's per-source scores ``τ (m, S)`` (``TextAttributor.score``) are
compared with the retrained outputs ``f`` = mean log-probability of the
window (kept in ``outputs``: ``keep (J, S)``, ``loso_index (L,)``, ``full
(E, m)``, ``subset (J, E, m)``, ``loso (L, E, m)``, so other methods can be
scored on the same truth: ``bench.sources.lm_quality``) by ``influence.audit`` (``worker.audit.metrics``): source-level
LDS, leave-one-source-out Pearson / Spearman, top-1 agreement, what-if
accuracy, with ``n`` = the store's training targets (``data.n_targets``).

What differs by kind is one ``Retrain`` (a kind trained from scratch, or a fine-tune): the corpus's
blocks, the query windows and how a model is trained and evaluated. ``hf``
stores: the store's recipe (``worker.hf_train.finetune`` from the store's own
base, LoRA or named parameters as built), queries = held-out windows of the
brown-ft benchmark (``influence.datasets.brown_ft.query_windows``), or, for a store
built from a JSONL file (every document trained on), the texts of
``--query-file`` (JSONL ``{"text"}`` lines).

Cost: one GPT training or fine-tune per model (about 25–60 s each on this
2-core machine at 1 thread): ``(1 + subsets + loso) × seeds`` of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from influence import registry
from influence.audit import draw_source_subsets, truth_noise
from influence.datasets.documents import corpus_sha256, word_corpus
from influence.errors import StoreError
from influence.store import Store
from influence.text.attributor import TextAttributor, TextQuery
from influence.text.causal import pad_right, sequence_logprob

from .audit_common import SCHEMA, finite, metrics
from .config import ConfigError


@dataclass
class Retrain:
    """A text store's audit inputs: ``blocks (N, T+1)``, ``block_doc (N,)``,
    queries ``x (m, L)`` with ``mask (m, L-1)``, ``train(keep_blocks | None,
    seed) -> params`` with the store's recipe, ``outputs(params) -> f (m,)``."""

    blocks: torch.Tensor
    block_doc: torch.Tensor
    x: torch.Tensor
    mask: torch.Tensor
    query_set: str
    train: Callable[[np.ndarray | None, int], dict]
    outputs: Callable[[dict], np.ndarray]


def _jsonl_path(store: Store) -> Path | None:
    man = store.manifest
    path = man.data.get("path")
    if path is None:
        return None
    f = Path(path)
    if not f.exists() or corpus_sha256(f) != man.data.get("sha256"):
        raise StoreError(f"{store.path}: it was built from {path}, which is gone or has changed since (sha256); "
                         "the audit retrains on the very corpus of the build")
    return f


def _check_docs(store: Store, ids: list[str], source_ids: list[str]) -> None:
    docs = json.loads(store.assets["documents.json"].decode())
    if [str(d["id"]) for d in docs] != list(ids) or source_ids != store.manifest.source_ids:
        raise StoreError(f"{store.path}: its documents or sources are not those of the corpus it names")


def _scratch_retrain(store: Store, s, query_file: Path | None) -> Retrain:
    """A kind trained from scratch (the protocol GPT): the corpus of the build (Brown or its JSONL file),
    its held-out windows, the kind's own recipe (``ModelKind.train``)."""

    if query_file is not None:
        raise ConfigError(f"--query-file: a {store.manifest.model.kind} store is audited on its corpus's held-out "
                          "windows")
    man, spec = store.manifest, store.manifest.model
    corpus = word_corpus(man.data.get("name"), _jsonl_path(store))
    if corpus is None:
        raise StoreError(f"{store.path}: its training corpus is not recorded (built before stores kept their "
                         "JSONL path); rebuild it to audit it")
    level = man.data.get("level")
    if level not in corpus.source_ids:
        raise StoreError(f"{store.path}: source level {level!r} is not one of its corpus")
    _check_docs(store, corpus.train_ids, corpus.source_ids[level])
    x, _, _ = corpus.queries(s.queries, seed=s.query_seed)
    kind, model = registry.of(spec), []

    def train(keep, seed):
        net, params, _ = kind.train(spec, corpus.blocks, seed, keep, threads=s.threads)
        model[:] = [net]
        return params

    def outputs(params):
        with torch.no_grad():
            return sequence_logprob(model[0], x, params).double().numpy()

    return Retrain(corpus.blocks, corpus.block_document, x, torch.ones(x.shape[0], x.shape[1] - 1, dtype=torch.bool),
                   f"held-out windows of {x.shape[1] - 1} targets: {len(x)}", train, outputs)


def _hf_queries(att: TextAttributor, s, query_file: Path | None, from_jsonl: bool) -> tuple[list[list[int]], str]:
    from influence.datasets.brown_ft import encode_queries, ft_text, query_windows

    if query_file is not None:  # validated and encoded like fa-worker score's query files (errors name the line)
        from influence.errors import DataError

        from .score_text import read_queries

        qs = read_queries(Path(query_file), att)[: s.queries]
        if any(q.n_targets != len(q.ids) - 1 for q in qs):
            raise DataError(query_file, 'audit queries are {"text": ...} lines (f = every token after the first)')
        return [q.ids for q in qs], f"{query_file}: {len(qs)}"
    if from_jsonl:
        raise ConfigError("--query-file: an hf store built from a JSONL file trained on every document; "
                          "give held-out texts as a JSONL file of {\"text\": ...} lines")
    wins = query_windows(ft_text(), s.queries, seed=s.query_seed)
    seqs = encode_queries(att.tokenizer.tok, [w[2] for w in wins], att.model.context)
    return seqs, f"brown-ft held-out windows: {len(wins)}"


def _finetune_retrain(store: Store, s, query_file: Path | None) -> Retrain:
    """An hf store: fine-tuned again from its own base with its recipe."""
    from influence.datasets.finetune import recorded
    from influence.hf.kind import base_dir as hf_base_dir

    from .hf_train import FTRecipe, finetune

    man, spec = store.manifest, store.manifest.model
    att = TextAttributor(store, "cpu")
    f = _jsonl_path(store)
    c = recorded(man.data, f, att.tokenizer.tok)
    if c is None:
        raise StoreError(f"{store.path}: its training corpus is not recorded; rebuild it to audit it")
    blocks, owner = c.blocks, c.block_doc
    _check_docs(store, c.doc_ids, c.source_ids)
    seqs, qdesc = _hf_queries(att, s, query_file, f is not None)
    x, mask = pad_right(seqs)
    r = man.recipe
    recipe = FTRecipe(r["lr"], tuple(r["betas"]), r["eps"], r["weight_decay"], r["batch"], r["epochs"])
    base = hf_base_dir(store)
    model = att.model

    def outputs(params):
        with torch.no_grad():
            return sequence_logprob(model, x, params, mask).double().numpy()

    def train(keep, seed):
        return finetune(base, spec, blocks, keep, seed, recipe, "cpu", threads=s.threads)[1]

    return Retrain(blocks, owner, x, mask, qdesc, train, outputs)


def _store_scores(att: TextAttributor, x: torch.Tensor, mask: torch.Tensor, chunk: int = 8) -> np.ndarray:
    """``(m, S)`` per-source scores of the query windows, sources only."""
    qs = []
    for row, m in zip(x, mask):
        n = int(m.sum())
        qs.append(TextQuery(row[: n + 1].tolist(), n, 0))
    return torch.cat([att.score(qs[i : i + chunk], examples=False).sources
                      for i in range(0, len(qs), chunk)]).double().numpy()


def compute_text_audit(store: Store, s, log=lambda msg: None, progress: bool = True,
                       query_file: Path | None = None) -> dict:
    """Run the audit of a loaded text store version; returns ``audit.json``'s dict."""
    t0 = time.perf_counter()
    man = store.manifest
    S, n = len(man.source_ids), int(man.data["n_targets"])
    if S < 3:
        raise StoreError(f"{store.path}: an audit needs at least 3 sources, the store has {S}")
    rt = (_scratch_retrain if registry.of(man.model).train else _finetune_retrain)(store, s, query_file)
    doc_source = np.asarray(man.example_source, dtype=np.int64)
    block_source = doc_source[rt.block_doc.numpy()]
    keep = draw_source_subsets(s.subsets, S, s.keep_prob, min(s.min_keep, S), s.selection_seed)
    counts = np.bincount(doc_source, minlength=S)
    loso_idx = np.sort(np.argsort(-counts, kind="stable")[: min(s.loso, S)])
    seeds = [registry.of(man.model).member_seed(int(man.recipe.get("seed", 0)), e) for e in range(s.seeds)]
    masks = [("full", 0, np.ones(S, bool))] + [("subset", j, k) for j, k in enumerate(keep)]
    masks += [("loso", i, np.arange(S) != src) for i, src in enumerate(loso_idx)]
    log(f"retraining {len(masks) * len(seeds)} language models ({len(keep)} subsets, {len(loso_idx)} left-out "
        f"sources, full; {len(seeds)} seed(s)) on {rt.blocks.shape[0]} blocks")
    m = rt.x.shape[0]
    out = {"full": np.zeros((len(seeds), m)), "subset": np.zeros((len(keep), len(seeds), m)),
           "loso": np.zeros((len(loso_idx), len(seeds), m))}
    t_data = time.perf_counter()
    bar = tqdm(total=len(masks) * len(seeds), desc=f"audit: retrain {man.model.kind}", unit="model",
               disable=not progress)
    done = 0
    for what, r, k in masks:
        blocks = np.flatnonzero(k[block_source])
        for e, seed in enumerate(seeds):
            f = rt.outputs(rt.train(None if what == "full" else blocks, seed))
            if what == "full":
                out["full"][e] = f
            else:
                out[what][r, e] = f
            bar.update()
            done += 1
            log(f"retrained {done}/{len(masks) * len(seeds)}: {what} {r}, seed {seed}")
    bar.close()
    t_train = time.perf_counter()
    att = TextAttributor(store, "cpu")
    tau = _store_scores(att, rt.x, rt.mask)
    k = min(len(seeds), man.members)
    own = np.stack([rt.outputs(att.params[e]) for e in range(k)])
    t_read = time.perf_counter()
    res = metrics(tau, n, keep, loso_idx, out["full"], out["subset"], out["loso"])
    truth = {**res.pop("_truth"), "noise": truth_noise(out["full"], out["loso"], out["subset"]),
             "full_vs_store_output_max_abs": float(np.abs(own - out["full"][:k]).max())}
    t_end = time.perf_counter()
    settings = {**asdict(s), "query_set": rt.query_set, "n_train_targets": n,
                "n_sources": S, "loso_sources": [man.source_ids[i] for i in loso_idx], "member_seeds": seeds,
                "models_trained": len(masks) * len(seeds), "recipe": man.recipe,
                "output": "logprob (mean log-probability of the window's targets)"}
    audit = {"schema": SCHEMA, "audited_version": man.version,
             "content_version": ((man.extra or {}).get("audit") or {}).get("content_version") or man.version,
             "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "store_kind": man.model.kind,
             "source_level": man.data.get("level"), "settings": settings, "metrics": res, "truth": truth,
             "outputs": {"keep": keep.tolist(), "loso_index": loso_idx.tolist(), "full": out["full"].tolist(),
                         "subset": out["subset"].tolist(), "loso": out["loso"].tolist()},
             "durations_s": {"data": t_data - t0, "train": t_train - t_data, "readout": t_read - t_train,
                             "metrics": t_end - t_read, "total": t_end - t0}}
    return finite(audit)
