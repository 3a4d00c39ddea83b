"""Stores the GPU suite (``bench.gpu_suite``) builds, times and reads, by
preset name: the real presets of a run on a lent GPU (``digits``, ``brown``,
``brown-ft``) and the tiny ones of a CPU dry run (``tiny``: the MLP preset;
``tiny-gpt``: a GPT of a few thousand parameters on a synthetic 40-document
corpus of 3 publishers; ``tiny-hf``: a 2-layer GPT-2 with its own byte-level
BPE tokenizer on the same corpus, LoRA). Built with the worker's CLI
(``fa-worker build ... --device D``), as a user would."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bench.harness.common import CACHE, ROOT

SCRATCH = CACHE / "gpu_suite"
TINY_GPT = ["model.d=8", "model.heads=2", "model.layers=1", "method.rank=48", "method.curvature_subset=8",
            "method.steps=50"]
"""As ``tests/text_corpus.TINY_GPT`` (bench does not import the tests)."""
TINY_HF = ["method.rank=32", "method.curvature_subset=8", "method.steps=50", "train.epochs=1", "data.max_blocks=2",
           "store.quant_bits=0"]
KIND = {"digits": "mlp", "tiny": "mlp", "brown": "gpt", "tiny-gpt": "gpt", "brown-ft": "hf", "tiny-hf": "hf"}


def tiny_corpus(scratch: Path = SCRATCH) -> Path:
    """40 documents of 300 words from 3 publishers (``pub-0..2``), each with its own favourite words."""
    path = scratch / "tiny-docs.jsonl"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    common = [f"w{i}" for i in range(60)]
    lines = []
    for d in range(40):
        own = [f"s{d % 3}x{i}" for i in range(15)]
        words = rng.choice(common + own * 3, size=300)
        lines.append(json.dumps({"id": f"d{d:03d}", "source": f"pub-{d % 3}", "text": " ".join(words)}))
    scratch.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_checkpoint(scratch: Path = SCRATCH) -> Path:
    """A local Hugging Face checkpoint: a 2-layer GPT-2 (d 12, context 32,
    random weights) and a byte-level BPE tokenizer trained on ``tiny_corpus``."""
    out = scratch / "tiny-hf-base"
    if (out / "config.json").exists():
        return out
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    docs = [json.loads(line)["text"] for line in tiny_corpus(scratch).read_text().splitlines()]
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(docs, vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=12, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_args(preset: str, scratch: Path = SCRATCH) -> list[str]:
    """``fa-worker build`` arguments of ``preset`` (without ``--device`` / ``--store``)."""
    if preset in ("digits", "brown", "brown-ft", "tiny"):
        return ["--preset", preset]
    sets = TINY_GPT if preset == "tiny-gpt" else TINY_HF
    head = ["--preset", "brown"] if preset == "tiny-gpt" else ["--model", str(tiny_checkpoint(scratch))]
    return [*head, "--data", str(tiny_corpus(scratch)), *[x for s in sets for x in ("--set", s)]]


def build(preset: str, device: str, root: Path, scratch: Path = SCRATCH) -> float:
    """Build ``preset`` on ``device`` into ``root`` (replaced) with the worker's
    CLI in this process; seconds the build took (the interpreter's start and
    imports not counted). Raises ``RuntimeError`` on a config error."""
    import shutil

    from worker.cli import main

    args = build_args(preset, scratch)  # (the tiny checkpoint is made before the clock starts)
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    rc = main(["build", *args, "--device", device, "--store", str(root), "--quiet"])
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"fa-worker build {preset} --device {device}: exit {rc} (the error is on stderr)")
    return seconds


def built(preset: str, scratch: Path = SCRATCH) -> Path | None:
    """A store of ``preset`` the suite's builds part published (any device), or None."""
    for d in sorted((scratch / "builds").glob(f"{preset}-*")):
        if d.name.removeprefix(f"{preset}-") in ("cuda", "cpu") and (d / "CURRENT").exists():
            return d
    return None


def store_for(preset: str, device: str, scratch: Path = SCRATCH) -> Path:
    """A published store of ``preset``: the builds part's, else ``stores/<preset>``
    (real presets), else built now on ``device`` into the scratch folder."""
    got = built(preset, scratch)
    if got is not None:
        return got
    if preset in ("brown", "brown-ft", "digits") and (ROOT / "stores" / preset / "CURRENT").exists():
        return ROOT / "stores" / preset
    root = scratch / "stores" / preset
    if not (root / "CURRENT").exists():
        build(preset, device, root, scratch)
    return root
