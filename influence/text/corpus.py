"""Split, training blocks and query windows of the language-model protocol
(``docs/lm-protocol.md``), for the Brown corpus and for user text.

- Split: sort the document ids as strings; position ``i`` with ``i % 10 == 9``
  is a held-out query document, the others are the training documents,
  indexed ``0..n_train-1`` in sorted order.
- Blocks: each training document is truncated to its first ``4 × 65 = 260``
  tokens and cut into consecutive non-overlapping blocks of 65 tokens (inputs
  the first 64, targets the last 64). Global block index = 4 × document index
  + block number for the Brown corpus (every sample has ≥ 2,148 tokens).
  *Choice for shorter documents (user text):* a document gets
  ``min(4, len // 65)`` blocks, blocks numbered consecutively in document
  order; a document under 65 tokens gets none (it stays a document and a
  source member, with zero training signal); ``LMCorpus.short_docs`` counts them.
- Query windows (*choice*): ``query_windows(docs, n, seed)`` takes document
  ``k mod len(docs)`` for query ``k`` (so queries spread evenly over the
  held-out documents) and a start drawn uniformly from ``0 .. len - 65`` with
  ``np.random.default_rng(seed).integers``, one draw per query in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..gpt.tokenizer import Tokenizer
from ..heldout import HeldoutSample

BLOCK = 65  # tokens per block: 64 inputs + 1 (targets are the last 64)
BLOCKS_PER_DOC = 4
VOCAB = 2000


def split_ids(ids: list[str]) -> tuple[list[str], list[str]]:
    """``(training ids, held-out ids)``, both sorted as strings."""
    s = sorted(ids)
    return [x for i, x in enumerate(s) if i % 10 != 9], [x for i, x in enumerate(s) if i % 10 == 9]


def training_blocks(
    docs: list[list[int]], blocks_per_doc: int = BLOCKS_PER_DOC, block: int = BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(blocks (N, block) int64, block_document (N,) int64)`` from encoded
    training documents; document ``j`` contributes ``min(blocks_per_doc,
    len(docs[j]) // block)`` consecutive blocks from its start."""
    rows, owner = [], []
    for j, d in enumerate(docs):
        for b in range(min(blocks_per_doc, len(d) // block)):
            rows.append(d[b * block : (b + 1) * block])
            owner.append(j)
    blocks = torch.tensor(rows, dtype=torch.long).reshape(len(rows), block)
    return blocks, torch.tensor(owner, dtype=torch.long)


def query_windows(
    docs: list[list[int]], n: int, seed: int, block: int = BLOCK
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``(windows (n, block) int64, doc (n,), start (n,))`` from encoded
    held-out documents; ``doc`` indexes ``docs``."""
    rng = np.random.default_rng(seed)
    ok = np.array([j for j, d in enumerate(docs) if len(d) >= block], dtype=np.int64)
    if len(ok) == 0:
        raise ValueError(f"no held-out document has {block} tokens")
    doc = ok[np.arange(n) % len(ok)]
    start = np.array([int(rng.integers(0, len(docs[d]) - block + 1)) for d in doc], dtype=np.int64)
    rows = [docs[d][s : s + block] for d, s in zip(doc, start)]
    return torch.tensor(rows, dtype=torch.long).reshape(n, block), doc, start


def all_windows(docs: list[list[int]], max_tokens: int | None = None, block: int = BLOCK) -> torch.Tensor:
    """Every non-overlapping ``block``-token window of each document (of its
    first ``max_tokens`` tokens if given), ``(M, block)`` int64: e.g. for
    held-out perplexity."""
    rows = []
    for d in docs:
        d = d if max_tokens is None else d[:max_tokens]
        rows += [d[i : i + block] for i in range(0, len(d) - block + 1, block)]
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), block)


@dataclass
class LMCorpus:
    """A tokenised corpus split per the protocol. ``train_doc_source[level]``
    ``(n_train,) int64`` indexes ``source_ids[level]``; ``blocks (N, 65)``;
    ``block_document (N,)`` indexes the training documents."""

    name: str
    tokenizer: Tokenizer
    train_ids: list[str]
    heldout_ids: list[str]
    train_tokens: list[list[int]]
    heldout_tokens: list[list[int]]
    blocks: torch.Tensor
    block_document: torch.Tensor
    source_ids: dict[str, list[str]]
    source_names: dict[str, list[str]]
    train_doc_source: dict[str, np.ndarray]
    heldout_doc_source: dict[str, np.ndarray]
    short_docs: int = 0
    meta: dict = field(default_factory=dict)
    heldout_sample: dict[str, HeldoutSample] = field(default_factory=dict)  # per level; published as heldout.json

    def block_source(self, level: str) -> np.ndarray:
        """``(N,)`` source index of every block."""
        return self.train_doc_source[level][self.block_document.numpy()]

    def queries(self, n: int, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        return query_windows(self.heldout_tokens, n, seed)


def build_corpus(
    name: str,
    ids: list[str],
    words: dict[str, list[str]],
    sources: dict[str, tuple[list[str], list[str], dict[str, int]]],
    vocab_size: int = VOCAB,
) -> LMCorpus:
    """Split ``ids``, build the vocabulary on the training documents, encode,
    cut blocks. ``sources[level] = (source_ids, names, doc id -> index)``."""
    tr, ho = split_ids(ids)
    tok = Tokenizer.build((words[i] for i in tr), vocab_size)
    tr_t = [tok.encode(words[i]) for i in tr]
    ho_t = [tok.encode(words[i]) for i in ho]
    blocks, owner = training_blocks(tr_t)
    return LMCorpus(
        name=name,
        tokenizer=tok,
        train_ids=tr,
        heldout_ids=ho,
        train_tokens=tr_t,
        heldout_tokens=ho_t,
        blocks=blocks,
        block_document=owner,
        source_ids={lv: s[0] for lv, s in sources.items()},
        source_names={lv: s[1] for lv, s in sources.items()},
        train_doc_source={lv: np.array([s[2][i] for i in tr], dtype=np.int64) for lv, s in sources.items()},
        heldout_doc_source={lv: np.array([s[2][i] for i in ho], dtype=np.int64) for lv, s in sources.items()},
        short_docs=sum(len(t) < BLOCK for t in tr_t),
    )
