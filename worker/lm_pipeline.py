"""The worker's job for a text kind trained from scratch (``ModelKind.train``:
the protocol GPT, or a kind of your own): corpus and its word tokenizer ->
E trained members (the kind's recipe: ``influence.gpt.train`` for the GPT) -> per-document
responses (``influence.text.lm_simulate``) -> compressed -> published with
the tokenizer and the documents' metadata as checksummed assets.

Member ``e`` trains with seed ``train.seed + e`` (``--preset brown --seed N``
is the protocol's full-data model for seed N). Sources are the corpus's
``data.sources`` level (``publication`` or ``genre`` for Brown, ``source``
for a JSONL file); per-source scores are the sums of their documents'.
With few sources (``store.source_rows``) each source's response, the exact
sum of its documents' rows, is also stored as a row of its own: a
sources-only answer then costs one tangent per source.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from influence import heldout, registry
from influence.datasets.documents import corpus_sha256, word_corpus
from influence.layout import ParamLayout
from influence.quant import dequantize, quantize
from influence.store import Manifest
from influence.text.causal import sequence_logprob
from influence.text.corpus import LMCorpus
from influence.text.lm_math import query_grads
from influence.text.lm_simulate import compress, probe_grads, score_agreement, simulate_documents

from .config import ConfigError, WorkerConfig
from .device import device_of, to_cpu
from .distributed import Shard
from .progress import Stages
from .publishing import publish

SNIPPET_WORDS = 40


def load_corpus(cfg: WorkerConfig) -> tuple[LMCorpus, str]:
    """The corpus and the source level used."""
    d = cfg.data
    corpus = word_corpus(d.name, d.path)
    level = d.sources if d.path is None else "source"
    if level not in corpus.source_ids:
        raise ConfigError(f"data.sources: {level!r} is not a source level of this corpus "
                          f"(have {sorted(corpus.source_ids)})")
    return corpus, level


def documents_asset(corpus: LMCorpus, level: str) -> list[dict]:
    """Per training document: id, source, genre (Brown), a snippet of its start."""
    genre = corpus.train_doc_source.get("genre")
    out = []
    for j, (doc_id, toks) in enumerate(zip(corpus.train_ids, corpus.train_tokens)):
        rec = {"id": doc_id, "source": corpus.source_ids[level][corpus.train_doc_source[level][j]],
               "snippet": " ".join(corpus.tokenizer.decode(toks[:SNIPPET_WORDS]))}
        if genre is not None:
            rec["genre"] = corpus.source_names["genre"][genre[j]]
        out.append(rec)
    return out


PROBES = 256  # training blocks whose output gradients steer the compression (what a readout will see)
HELDOUT_CHECK = 64  # held-out windows on which the compression's score error is measured


def _heldout(corpus: LMCorpus) -> torch.Tensor:
    x, _, _ = corpus.queries(HELDOUT_CHECK, seed=4242)
    return x


def _membership(doc_source: torch.Tensor, n_src: int) -> torch.Tensor:
    """``(n_docs, n_src)`` 0/1 on ``doc_source``'s device."""
    n, dev = len(doc_source), doc_source.device
    return torch.zeros(n, n_src, device=dev).index_put_((torch.arange(n, device=dev), doc_source),
                                                        torch.ones(n, device=dev))


def _heldout_loss(model, params, heldout: tuple[torch.Tensor, torch.Tensor | None], U: torch.Tensor,
                  stored: torch.Tensor, coef, A: torch.Tensor) -> dict:
    """Score agreement, on held-out windows ``(x, target_mask)``, of the stored
    responses (``stored (r, p)`` with ``coef (n, r)``, or rows) with the exact
    ``U``: per document and per source."""
    g = query_grads(model, params, *heldout)
    exact = g @ U.T
    approx = g @ stored.T if coef is None else (g @ stored.T) @ coef.T
    return {"documents": score_agreement(exact, approx), "sources": score_agreement(exact @ A, approx @ A)}


def wants_source_rows(setting: str, n_sources: int, tangents: int) -> bool:
    """Store per-source rows: ``always``, ``never``, or ``auto`` when the
    ``n_sources`` tangents of a sources-only answer are at most a quarter of
    the ``tangents`` (document rows or basis rows) it costs without them."""
    return setting == "always" or (setting == "auto" and 4 * n_sources <= tangents)


def respond(cfg: WorkerConfig, model, params: dict[str, torch.Tensor], blocks: torch.Tensor,
            block_doc: torch.Tensor, doc_source: torch.Tensor, n_src: int, seed: int,
            heldout: tuple[torch.Tensor, torch.Tensor | None] | None, progress=None, memo=None,
            shard: Shard | None = None) -> dict | None:
    """A trained member's stored responses, for any ``CausalLM`` kind:
    per-document responses simulated in the trained subspace, compressed
    and/or quantised as configured (the score error on ``heldout`` windows
    recorded), and per-source rows (exact sums) when they pay. ``progress``
    and ``memo``: ``lm_simulate.simulate_documents``'s stage reports and checkpoints.
    ``shard`` (a ``torchrun`` build): this process simulates its documents, the
    rows are gathered on rank 0, which does the rest; other ranks get ``None``."""
    m = cfg.method
    t0 = time.perf_counter()
    kw = {} if memo is None else {"memo": memo}
    if shard is not None and shard.world > 1:
        kw.update(docs=shard.docs(len(doc_source)), share=(shard.rank, shard.world), reduce=shard.all_reduce)
    resp = simulate_documents(model, params, blocks, block_doc, len(doc_source), m, 0.0, seed, progress, **kw)
    if shard is not None and shard.world > 1:
        resp.U = shard.gather(resp.U, f"responses-{seed}")
        if resp.U is None:
            return None
    basis, coef, comp = resp.U, None, {}
    if m.compress_rank:
        probe = probe_grads(model, params, blocks, PROBES, seed)
        basis, coef, cs = compress(resp.U, doc_source, n_src, m.compress_rank, probe)
        comp = cs.__dict__
    q = cfg.quant()
    # quantised on the CPU (influence.quant packs bits with CPU index tensors), the result back on basis' device
    stored = basis if q is None else dequantize(quantize(basis, q["bits"], q["group"]))
    A = _membership(doc_source.to(resp.U.device), n_src)
    if (m.compress_rank or q is not None) and heldout is not None:
        comp["quant"] = q
        comp["heldout"] = _heldout_loss(model, params, heldout, resp.U, stored, coef, A)
    layout = ParamLayout.of(params)
    src_rows = None
    if wants_source_rows(cfg.store.source_rows, n_src, basis.shape[0]):
        src_rows = layout.unflatten((A.T @ resp.U).cpu().contiguous())  # (S, p): exact sums, before any rounding
    return {"basis": layout.unflatten(basis.float().cpu().contiguous()), "coef": None if coef is None else coef.cpu(),
            "sources": src_rows, "stats": {"simulate_s": round(time.perf_counter() - t0, 2),
                                           "compression": comp or None, **resp.diagnostics}}


def _member(cfg: WorkerConfig, corpus: LMCorpus, level: str, e: int, progress: bool) -> dict:
    """One member trained and simulated on ``train.device``; what it publishes on the CPU."""
    spec, dev, kind = cfg.model, device_of(cfg), registry.of(cfg.model)
    seed = kind.member_seed(cfg.train.seed, e)
    blocks = corpus.blocks.to(dev)
    model, params, stats = kind.train(spec, blocks, seed)
    doc_source = torch.from_numpy(corpus.train_doc_source[level]).to(dev)
    stages = Stages(f"[{e + 1}/{cfg.method.ensemble}] ", progress)
    out = respond(cfg, model, params, blocks, corpus.block_document.to(dev), doc_source,
                  len(corpus.source_ids[level]), seed, (_heldout(corpus).to(dev), None), stages)
    stages.close()
    windows = torch.stack([torch.tensor(t[:65]) for t in corpus.heldout_tokens if len(t) >= 65])
    ppl = perplexity(model, params, windows.to(dev))
    out["params"] = to_cpu(params)
    out["stats"] = {"seed": seed, "final_loss": stats["final_loss"], "train_s": round(stats["seconds"], 2),
                    "heldout_perplexity": ppl, **out["stats"]}
    return out


@torch.no_grad()
def perplexity(model, params: dict[str, torch.Tensor], windows: torch.Tensor, batch: int = 256) -> float:
    """``exp`` of the mean token loss of ``model`` with ``params`` over ``windows (M, T+1)``."""
    tot = 0.0
    for i in range(0, windows.shape[0], batch):
        tot += float(sequence_logprob(model, windows[i : i + batch], params).sum())
    return math.exp(-tot / windows.shape[0])


def _data_file(cfg: WorkerConfig) -> dict:
    """A user corpus's file and its sha256 (the audit retrains on it, if unchanged)."""
    if cfg.data.path is None:
        return {}
    return {"path": str(Path(cfg.data.path).resolve()), "sha256": corpus_sha256(cfg.data.path)}


def build(cfg: WorkerConfig, progress: bool = True) -> Path:
    corpus, level = load_corpus(cfg)
    block = int(corpus.blocks.shape[1]) - 1
    if cfg.model.context < block:
        raise ConfigError(f"model.context: {cfg.model.context} is shorter than the training blocks ({block} inputs)")
    if cfg.model.vocab != corpus.tokenizer.vocab_size:  # a user corpus may have fewer than 2,000 distinct words
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab": corpus.tokenizer.vocab_size})})
    m = cfg.method
    members = [_member(cfg, corpus, level, e, progress) for e in range(m.ensemble)]
    sids = corpus.source_ids[level]
    manifest = Manifest(
        format_version=2, model=cfg.model, method=m.model_dump(mode="json"),
        recipe={**registry.of(cfg.model).recipe, "seed": cfg.train.seed},
        data={"name": corpus.name, **_data_file(cfg), "n": len(corpus.train_ids),
              "n_blocks": int(corpus.blocks.shape[0]),
              "n_targets": int(corpus.blocks.shape[0] * (corpus.blocks.shape[1] - 1)), "level": level,
              "heldout_ids": corpus.heldout_ids, "short_docs": corpus.short_docs},
        classes=[], source_ids=sids, example_source=corpus.train_doc_source[level].tolist(),
        members=m.ensemble, dtype=cfg.store.dtype, examples_quant=cfg.quant(), has_examples=True, has_sources=False,
        extra={"members": [mb["stats"] for mb in members], "preset": cfg.preset,
               "source_names": corpus.source_names[level]},
    )
    assets = {"tokenizer.json": corpus.tokenizer.to_json().encode(),
              "documents.json": json.dumps(documents_asset(corpus, level), ensure_ascii=False).encode(),
              **heldout.asset(corpus.heldout_sample.get(level))}
    coef = [mb["coef"] for mb in members] if m.compress_rank else None
    src = [mb["sources"] for mb in members] if members[0]["sources"] is not None else None
    return publish(cfg.store.root, manifest, [mb["params"] for mb in members], [mb["basis"] for mb in members],
                   src, keep=cfg.store.keep, example_coef=coef, assets=assets)
