"""The worker's job for a Hugging Face causal LM (``model.kind == "hf"``):
a local base model + a corpus -> E fine-tuned members (``worker.hf_train``,
the typed AdamW recipe; member ``e`` uses seed ``train.seed + e``) ->
per-document responses in the trained subspace, compressed / quantised and
per-source rows as for the protocol GPT (``lm_pipeline.respond``) ->
published with the tokenizer, the documents' metadata and the base (copied
into the store, or referenced by path and sha256).

The corpus (``brown-ft``, or a user's documents) is cut into blocks by
``influence.datasets.finetune`` (every document with a target trains); the
build prints and the manifest records the coverage (``data.coverage``), and a
source left with no training signal stops the build unless
``data.allow_empty_sources``.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from influence import heldout, registry
from influence.datasets.finetune import FinetuneCorpus, finetune_corpus
from influence.hf.loader import check_dir, load_tokenizer, weight_checksums, weight_files
from influence.hf.model import context_of, with_layout
from influence.store import Manifest
from influence.text.causal import PAD

from .config import ConfigError, WorkerConfig
from .device import device_of
from .distributed import Shard, barrier, broadcast_params, init_from_env, shutdown
from .hf_train import FTRecipe, finetune, load_wrapped
from .lm_pipeline import _data_file, respond
from .progress import Stages
from .publishing import publish
from .workdir import WorkDir

COPY_BASE_MB = 200  # model.base='store' copies at most this much; larger bases must be referenced
DEFAULT_BLOCK = 512  # inputs per fine-tuning block by default (or the model's context when shorter)


def block_size(cfg: WorkerConfig, context: int) -> int:
    """Tokens per fine-tuning block: ``data.block_tokens``, default min(context, 512) + 1."""
    size = cfg.data.block_tokens or min(context, DEFAULT_BLOCK) + 1
    if size - 1 > context:
        raise ConfigError(f"data.block_tokens: {size} needs {size - 1} inputs, more than the model's context {context}")
    if size < 2:
        raise ConfigError("data.block_tokens: at least 2 (one input and one target)")
    return size


def cut_corpus(cfg: WorkerConfig, tok, context: int) -> FinetuneCorpus:
    """The configured corpus cut into blocks (``influence.datasets.finetune``): what the build trains on
    and ``fa-worker plan`` counts. ``data.block_tokens`` applies to a user's documents (brown-ft's are fixed)."""
    d = cfg.data
    return finetune_corpus(d.name, d.path, tok, d.sources, block_size(cfg, context) if d.path else 0, d.max_blocks)


def load_corpus(cfg: WorkerConfig, tok, context: int) -> FinetuneCorpus:
    """``cut_corpus``; a source left with no training signal stops the build unless
    ``data.allow_empty_sources``."""
    d = cfg.data
    c = cut_corpus(cfg, tok, context)
    cov = c.coverage
    if cov is not None and cov.empty_sources and not d.allow_empty_sources:
        raise ConfigError(f"{d.path}: {len(cov.empty_sources)} source(s) would have no training signal "
                          f"(none of their documents has a target token): {', '.join(cov.empty_sources[:10])}; "
                          "their publishers would earn nothing. Fix the documents, or publish anyway with "
                          "--allow-empty-sources (data.allow_empty_sources=true; recorded in the manifest)")
    return c


def _base_assets(base: Path, mode: str) -> tuple[dict[str, bytes], dict]:
    """``base/*`` assets when the base is copied; the spec's base fields either way."""
    files = [base / "config.json", *weight_files(base)]
    if (base / "generation_config.json").is_file():
        files.append(base / "generation_config.json")
    mb = sum(f.stat().st_size for f in files) / 2**20
    if mode == "store" and mb > COPY_BASE_MB:
        raise ConfigError(f"model.base: the base's files are {mb:.0f} MB, more than {COPY_BASE_MB} MB to copy into "
                          "every store version; set model.base=path to reference it by path and sha256")
    if mode == "store":
        return {f"base/{f.name}": f.read_bytes() for f in files}, {"base": "store", "base_path": None,
                                                                    "base_sha256": weight_checksums(base)}
    return {}, {"base": "path", "base_path": str(base), "base_sha256": weight_checksums(base)}


def _tokenizer_assets(tok) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        return {f"tokenizer/{f.name}": f.read_bytes() for f in sorted(Path(d).iterdir()) if f.is_file()}


def _trained_summary(spec) -> str:
    """One line naming the trained subspace, so a user sees what the defaults chose."""
    n = sum(math.prod(s) for s in spec.shapes)
    if spec.trained == "lora":
        what = f"LoRA r={spec.lora.r} alpha={spec.lora.alpha:g} on {', '.join(spec.lora.target_modules)}"
    elif spec.trained == "patterns":
        what = f"the base parameters matching {spec.patterns}"
    else:
        what = "every parameter"
    return f"trained: {what} ({len(spec.names)} tensors, {n:,} parameters)"


def build_hf(cfg: WorkerConfig, progress: bool = True) -> Path:
    from transformers import AutoConfig

    spec, m, tr = cfg.model, cfg.method, cfg.train
    base = check_dir(spec.path)
    tok = load_tokenizer(base)
    hf_cfg = AutoConfig.from_pretrained(str(base), local_files_only=True)  # read once: context, architecture
    recipe = FTRecipe(tr.lr, tuple(tr.betas), tr.eps, tr.weight_decay, tr.batch_size, tr.epochs)
    dev = device_of(cfg)
    t_start = time.perf_counter()
    corpus = load_corpus(cfg, tok, context_of(hf_cfg))
    if corpus.coverage is not None and progress:
        print(f"corpus {corpus.name}: {corpus.coverage.summary()}", flush=True)
    init_from_env()
    work = WorkDir(cfg.store.root, _work_key(cfg, base))
    shard = Shard(work.path)
    work.agree = shard.all_agree
    members, final_spec = [], spec
    for e in range(m.ensemble):
        out, final_spec = _member(cfg, base, spec, corpus, recipe, dev, e, work, progress and shard.rank == 0, shard)
        members.append(out)
    if shard.rank != 0:  # its rows went to rank 0
        barrier()
        shutdown()
        return None
    path = _publish(cfg, final_spec, base, hf_cfg, tok, corpus, members, recipe, time.perf_counter() - t_start,
                    work.restored)
    work.remove()
    barrier()
    shutdown()
    return path


def _work_key(cfg: WorkerConfig, base: Path) -> str:
    """What the build's result depends on: the settings, the corpus file, the base's files."""
    settings = cfg.model_dump_json(include={"data", "model", "train", "method", "store"}, exclude={"store": {"keep"}})
    return json.dumps([settings, _data_file(cfg).get("sha256"), weight_checksums(base)], sort_keys=True)


def _member(cfg: WorkerConfig, base: Path, spec, corpus: FinetuneCorpus, recipe: FTRecipe, dev, e: int, work: WorkDir,
            progress: bool, shard: Shard) -> tuple[dict | None, object]:
    """Member ``e`` fine-tuned and simulated, each stage from ``work`` when a killed build left it there:
    ``(what it publishes, on the CPU, or None on ranks other than 0; the spec with its layout)``.
    Under ``torchrun`` every rank fine-tunes (rank 0's parameters broadcast, so all agree exactly) and
    simulates its shard of documents; checkpoints are per rank."""
    seed = registry.of(spec).member_seed(cfg.train.seed, e)
    stages = Stages(f"[{e + 1}/{cfg.method.ensemble}] ", progress)
    tag = "" if shard.world == 1 else f".rank{shard.rank}of{shard.world}"
    done = work.load(f"member-{seed}{tag}")  # (ranks other than 0 keep none: a sharded member is redone)
    if done is not None:
        stages.skipped("fine-tune + simulation", "finished before, read from the checkpoint")
        final_spec = spec.model_validate(done["spec"])
        if e == 0 and progress:
            tqdm.write(_trained_summary(final_spec))
        return done["out"], final_spec
    ft = work.load(f"ft-{seed}{tag}")
    if ft is None:
        model, params, stats = finetune(base, spec, corpus.blocks, None, seed, recipe, dev, progress=progress)
        broadcast_params(params)  # in place: the model's own parameters too
        work.save(f"ft-{seed}{tag}", {"params": {k: v.cpu() for k, v in params.items()}, "stats": stats})
    else:
        stages.skipped("fine-tune")
        params, stats = {k: v.to(dev) for k, v in ft["params"].items()}, ft["stats"]
        model = load_wrapped(base, spec, seed, dev, params)
    final_spec = with_layout(spec, model)
    if e == 0 and progress:
        tqdm.write(_trained_summary(final_spec))
    held = None if corpus.heldout is None else tuple(t.to(dev) for t in corpus.heldout)
    out = respond(cfg, model, params, corpus.blocks.to(dev), corpus.block_doc.to(dev), corpus.doc_source.to(dev),
                  len(corpus.source_ids), seed, held, stages, work.memo(f"sim-{seed}{tag}", dev, stages.skipped),
                  shard)
    stages.close()
    if out is None:
        return None, final_spec
    out["params"] = {k: v.cpu() for k, v in params.items()}
    out["stats"] = {"seed": seed, "final_loss": stats["final_loss"], "train_s": round(stats["seconds"], 2),
                    **out["stats"]}
    work.save(f"member-{seed}", {"out": out, "spec": final_spec.model_dump(mode="json")})
    return out, final_spec


def _publish(cfg: WorkerConfig, spec, base: Path, hf_cfg, tok, c: FinetuneCorpus, members: list[dict], recipe: FTRecipe,
             seconds: float, restored: list[str]) -> Path:
    base_assets, base_fields = _base_assets(base, spec.base)
    spec = spec.model_copy(update={**base_fields, "path": None, "architecture": (hf_cfg.architectures or ["?"])[0],
                                   "context": context_of(hf_cfg), "vocab": len(tok)})
    n_targets = int((c.blocks[:, 1:] != PAD).sum())
    manifest = Manifest(
        format_version=2, model=spec, method=cfg.method.model_dump(mode="json"),
        recipe={"optimizer": "adamw", **recipe.__dict__, "schedule": "warmup 5% + cosine", "seed": cfg.train.seed,
                "loss": "mean token cross-entropy"},
        data={"name": c.name, **_data_file(cfg), "n": len(c.doc_ids), "n_blocks": int(c.blocks.shape[0]),
              "block_tokens": int(c.block_tokens or c.blocks.shape[1]), "max_blocks": cfg.data.max_blocks,
              "n_targets": n_targets,
              "level": c.level, "short_docs": c.short_docs,
              "coverage": None if c.coverage is None else c.coverage.as_dict(),
              "allow_empty_sources": cfg.data.allow_empty_sources,
              "heldout_ids": list(c.heldout_ids), "base_path_at_build": str(base)},
        classes=[], source_ids=c.source_ids, example_source=c.doc_source.tolist(), members=len(members),
        dtype=cfg.store.dtype, examples_quant=cfg.quant(), has_examples=True, has_sources=False,
        extra={"members": [mb["stats"] for mb in members], "preset": cfg.preset, "source_names": c.source_names,
               "build_s": round(seconds, 1), "trainable_params": spec.layout().numel,
               "resumed_stages": restored})
    assets = {**base_assets, **_tokenizer_assets(tok), **heldout.asset(c.heldout_sample),
              "documents.json": json.dumps(c.documents(), ensure_ascii=False).encode()}
    coef = [mb["coef"] for mb in members] if cfg.method.compress_rank else None
    src = [mb["sources"] for mb in members] if members[0]["sources"] is not None else None
    return publish(cfg.store.root, manifest, [mb["params"] for mb in members], [mb["basis"] for mb in members],
                   src, keep=cfg.store.keep, example_coef=coef, assets=assets)
