"""A fine-tuning corpus, tokenised by the model's own tokenizer: the one
place where a fine-tune's data (the built-in ``brown-ft`` openings, or a
user's documents: JSONL, parquet, arrow, ``save_to_disk``) becomes blocks,
document owners, sources, held-out windows and a held-out sample. The
worker's build, its plan and the audit's retrains all cut it here, the same
way.

``brown-ft``: ft-protocol's 450 openings, 4 blocks of 65 BPE tokens each,
sources at ``level``; ``CHECK_WINDOWS`` held-out windows of the 50 held-out
documents check the stored responses. A user's documents: every document
with a target trains, cut into blocks of ``size`` tokens from its start, at
most ``max_blocks`` each, its remainder (or the whole of a shorter document)
a right-padded block of its own length (``influence.text.blocks``), with the
``Coverage`` of what trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from ..heldout import HeldoutSample
from ..text.blocks import Coverage, coverage, document_blocks
from ..text.causal import pad_right
from .brown_ft import encode_queries, ft_blocks, ft_heldout_sample, ft_text, query_windows
from .documents import read_documents

BROWN_FT = "brown-ft"
CHECK_WINDOWS = 64  # held-out windows on which the stored responses' score error is measured (brown-ft)
SNIPPET_WORDS = 40  # of a document's start, in the store's documents asset


@dataclass
class FinetuneCorpus:
    name: str
    doc_ids: list[str]
    doc_text: list[str]
    doc_source: torch.Tensor  # (n,) int64
    source_ids: list[str]
    source_names: list[str]
    blocks: torch.Tensor  # (N, T+1) int64
    block_doc: torch.Tensor  # (N,) int64
    heldout: tuple[torch.Tensor, torch.Tensor] | None  # (x, target_mask) windows never trained on
    short_docs: int = 0  # documents left out of training (no target token)
    genre: list[str] | None = None
    heldout_sample: HeldoutSample | None = None  # published as heldout.json
    coverage: Coverage | None = None  # what of the corpus trains (users' documents; brown-ft's blocks are all full)
    block_tokens: int = 0  # the configured block size (blocks may all be shorter); 0 = blocks.shape[1]
    level: str = "source"  # the source level its sources are
    heldout_ids: tuple[str, ...] = ()  # documents held out of training

    def documents(self) -> list[dict]:
        """The store's documents asset: per document its id, source, genre (brown-ft) and opening words."""
        out = []
        for j, (did, text) in enumerate(zip(self.doc_ids, self.doc_text, strict=True)):
            rec = {"id": did, "source": self.source_ids[int(self.doc_source[j])],
                   "snippet": " ".join(text.split()[:SNIPPET_WORDS])}
            if self.genre is not None:
                rec["genre"] = self.genre[j]
            out.append(rec)
        return out


def brown_ft(tok, level: str) -> FinetuneCorpus:
    """ft-protocol's corpus at source level ``level``, with its check windows and held-out sample."""
    t = ft_text()
    blocks, owner = ft_blocks(tok, t.openings)
    wins = query_windows(t, CHECK_WINDOWS, seed=4242)
    x, mask = pad_right(encode_queries(tok, [w[2] for w in wins]))
    genre = [t.source_names["genre"][g] for g in t.doc_source["genre"]]
    return FinetuneCorpus(BROWN_FT, t.train_ids, t.openings, torch.from_numpy(t.doc_source[level]),
                          t.source_ids[level], t.source_names[level], blocks, owner, (x, mask), 0, genre,
                          ft_heldout_sample(level), level=level, heldout_ids=tuple(t.heldout_ids))


def cover(recs: list[dict], tok, size: int, max_blocks: int) -> tuple[list[str], torch.Tensor, torch.Tensor,
                                                                        Coverage]:
    """``(doc ids, blocks (N, L), block_doc (N,), Coverage)`` of document records ``{"id", "source", "text"}``."""
    toks = [tok(r["text"], add_special_tokens=False)["input_ids"] for r in recs]
    blocks, owner, left, cut = document_blocks(toks, size, max_blocks)
    ids = [r["id"] for r in recs]
    return ids, blocks, owner, coverage(blocks, owner, ids, [r["source"] for r in recs], left, cut)


def documents(path: str | Path, tok, size: int, max_blocks: int) -> FinetuneCorpus:
    """A user's documents at ``path`` cut into blocks of ``size`` tokens (its ``coverage`` says what trains)."""
    recs = read_documents(path)
    ids, blocks, owner, cov = cover(recs, tok, size, max_blocks)
    if not blocks.shape[0]:
        raise DataError(path, "no document has a target token (every text tokenizes to fewer than 2 tokens)")
    src_ids = sorted({r["source"] for r in recs})
    pos = {s: i for i, s in enumerate(src_ids)}
    return FinetuneCorpus(Path(path).stem, ids, [r["text"] for r in recs],
                          torch.tensor([pos[r["source"]] for r in recs]), src_ids, src_ids, blocks, owner, None,
                          len(cov.left_out), coverage=cov, block_tokens=size)


def finetune_corpus(name: str | None, path: str | Path | None, tok, level: str, size: int,
                    max_blocks: int) -> FinetuneCorpus:
    """The built-in corpus ``name`` (``brown-ft``, at ``level``), or the documents at ``path``."""
    return brown_ft(tok, level) if path is None and name == BROWN_FT else documents(path, tok, size, max_blocks)


def recorded(data: dict, path: str | Path | None, tok) -> FinetuneCorpus | None:
    """A published store's corpus again, from its manifest's ``data`` record and its corpus file ``path``
    (None when the record names neither a file nor a built-in corpus)."""
    if path is None and data.get("name") != BROWN_FT:
        return None
    return finetune_corpus(data.get("name"), path, tok, data.get("level", "source"), int(data.get("block_tokens", 0)),
                           int(data.get("max_blocks", 0)))
