"""Text of the fine-tuning benchmark (``ft-protocol.md``): the Brown corpus
split of ``lm-protocol.md``, each training document cut into its **opening**
(corpus tokens 0..259, the fine-tuning text and the document whose credit is
measured) and its **rest** (tokens 260..end, base pretraining text only),
both joined with single spaces. The 50 held-out documents give the queries.

- Fine-tuning blocks (``ft_blocks``): each opening encoded with the store's
  tokenizer (no special tokens), truncated to its first 260 BPE tokens and
  cut into 4 consecutive blocks of 65 (inputs the first 64, targets the last
  64); global block index = 4 × document index + block number.
- Query windows (``query_windows``, *choice*): every consecutive,
  non-overlapping window of 64 corpus tokens of each held-out document, in
  document order; ``n`` of them drawn without replacement with
  ``numpy.random.default_rng(seed).choice`` and kept in that drawn order.
  Each is joined with single spaces, encoded, truncated to the context (128).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..heldout import HeldoutSample
from ..text.corpus import split_ids
from .brown import heldout_sample, load_brown, source_table

OPENING = 260  # corpus tokens of a document's opening
BLOCK = 65  # BPE tokens per fine-tuning block (64 inputs + 1)
BLOCKS_PER_DOC = 4
WINDOW = 64  # corpus tokens per query window
CONTEXT = 128  # the base's context: a query is truncated to it


@dataclass(frozen=True)
class FTText:
    """The benchmark's texts. ``doc_source[level] (450,)`` indexes ``source_ids[level]``."""

    train_ids: list[str]
    heldout_ids: list[str]
    openings: list[str]
    rests: list[str]
    heldout_words: list[list[str]]
    source_ids: dict[str, list[str]]
    source_names: dict[str, list[str]]
    doc_source: dict[str, np.ndarray]


@lru_cache(maxsize=1)
def ft_text() -> FTText:
    samples = load_brown()
    by_id = {s.id: s for s in samples}
    tr, ho = split_ids(list(by_id))
    ids, names, index = {}, {}, {}
    for level in ("publication", "genre"):
        sids, snames, idx = source_table(samples, level)
        pos = dict(zip((s.id for s in samples), idx))
        ids[level], names[level] = sids, snames
        index[level] = np.array([pos[i] for i in tr], dtype=np.int64)
    return FTText(
        train_ids=tr, heldout_ids=ho,
        openings=[" ".join(by_id[i].tokens[:OPENING]) for i in tr],
        rests=[" ".join(by_id[i].tokens[OPENING:]) for i in tr],
        heldout_words=[list(by_id[i].tokens) for i in ho],
        source_ids=ids, source_names=names, doc_source=index)


def ft_blocks(tokenizer, openings: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(blocks (4·n, 65) int64, block_document (4·n,))``. Every Brown
    opening has more than 260 BPE tokens; a shorter text raises."""
    rows, owner = [], []
    for j, text in enumerate(openings):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: BLOCK * BLOCKS_PER_DOC]
        if len(ids) < BLOCK * BLOCKS_PER_DOC:
            raise ValueError(f"opening {j}: {len(ids)} BPE tokens, fewer than {BLOCK * BLOCKS_PER_DOC}")
        for b in range(BLOCKS_PER_DOC):
            rows.append(ids[b * BLOCK : (b + 1) * BLOCK])
            owner.append(j)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(owner, dtype=torch.long)


def all_query_windows(text: FTText) -> list[tuple[int, int, str]]:
    """Every ``(held-out doc index, start, text)`` window of 64 corpus tokens, non-overlapping, in order."""
    out = []
    for d, words in enumerate(text.heldout_words):
        for s in range(0, len(words) - WINDOW + 1, WINDOW):
            out.append((d, s, " ".join(words[s : s + WINDOW])))
    return out


def query_windows(text: FTText, n: int, seed: int) -> list[tuple[int, int, str]]:
    """``n`` windows drawn without replacement (see the module docstring)."""
    every = all_query_windows(text)
    pick = np.random.default_rng(seed).choice(len(every), size=min(n, len(every)), replace=False)
    return [every[i] for i in pick]


def encode_queries(tokenizer, texts: list[str], context: int = CONTEXT) -> list[list[int]]:
    """Token ids of each text, truncated to ``context`` tokens (≥ 2 each)."""
    out = [tokenizer(t, add_special_tokens=False)["input_ids"][:context] for t in texts]
    if any(len(o) < 2 for o in out):
        raise ValueError("a query encodes to fewer than 2 tokens")
    return out


def ft_heldout_sample(level: str) -> HeldoutSample:
    """The benchmark's held-out sample: the first query window of each
    held-out document (``all_query_windows``), one per genre first."""
    text = ft_text()
    first: dict[str, str] = {}
    for d, _, w in all_query_windows(text):
        first.setdefault(text.heldout_ids[d], w)
    return heldout_sample([i for i in text.heldout_ids if i in first], level, first)
