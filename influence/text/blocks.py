"""Fine-tuning blocks of a corpus in which no document is dropped.

Each document (its token ids) is cut from its start into blocks of ``size``
tokens (``size − 1`` targets each); what is left after the last full block
becomes one shorter block when it holds a target (at least 2 tokens), and a
document shorter than one block is a single block of its own length. Short
blocks are right-padded with ``gpt.PAD``, which ``lm_loss``, the document
gradients and the curvature read as "no input, no target", so a padded
block trains and is attributed exactly as its unpadded tokens would be.

``max_blocks`` (0 = all) caps the blocks per document from its start; what
it cuts is counted. A document with fewer than 2 tokens has no target: it is
left out of training, and ``Coverage`` says so by id and reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .causal import PAD


@dataclass
class Coverage:
    """What of the corpus trains: counts, and every document left out
    (``{"id", "source", "reason"}``) or without any signal for its source."""

    documents: int
    documents_trained: int
    blocks: int
    padded_blocks: int
    target_tokens: int
    tokens_cut: int  # tokens after a document's ``max_blocks``-th block
    left_out: list[dict] = field(default_factory=list)
    empty_sources: list[str] = field(default_factory=list)  # sources none of whose documents trains

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        out = (f"{self.documents_trained} of {self.documents} documents trained: {self.blocks} blocks "
               f"({self.padded_blocks} shorter than a block, padded), {self.target_tokens} target tokens")
        if self.tokens_cut:
            out += f", {self.tokens_cut} tokens cut by data.max_blocks"
        if self.left_out:
            out += "; left out: " + ", ".join(f"{d['id']} ({d['reason']})" for d in self.left_out[:5])
            out += f" and {len(self.left_out) - 5} more" if len(self.left_out) > 5 else ""
        return out


def document_blocks(docs: list[list[int]], size: int, max_blocks: int = 0) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 list[tuple[int, str]], int]:
    """``(blocks (N, L) int64, block_doc (N,) int64, left_out [(doc index, reason)], tokens_cut)``.

    ``L`` = ``size``, or the longest block when every document is shorter;
    blocks shorter than ``L`` are right-padded with ``PAD``."""
    if size < 2:
        raise ValueError("size: at least 2 tokens (one input and one target)")
    rows, owner, left, cut = [], [], [], 0
    for j, ids in enumerate(docs):
        if len(ids) < 2:
            left.append((j, "no target: fewer than 2 tokens"))
            continue
        parts = [ids[s:s + size] for s in range(0, len(ids), size)]
        parts = [p for p in parts if len(p) >= 2]  # a 1-token remainder has no target
        if max_blocks and len(parts) > max_blocks:
            cut += sum(len(p) for p in parts[max_blocks:])
            parts = parts[:max_blocks]
        rows += parts
        owner += [j] * len(parts)
    if not rows:
        return torch.empty(0, size, dtype=torch.long), torch.empty(0, dtype=torch.long), left, cut
    width = max(len(r) for r in rows)
    blocks = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        blocks[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return blocks, torch.tensor(owner, dtype=torch.long), left, cut


def coverage(blocks: torch.Tensor, block_doc: torch.Tensor, doc_ids: list[str], doc_source: list[str],
             left: list[tuple[int, str]], tokens_cut: int) -> Coverage:
    """The ``Coverage`` of ``document_blocks``' result over documents
    ``doc_ids`` of sources ``doc_source``."""
    trained = set(block_doc.tolist())
    with_signal = {doc_source[j] for j in trained}
    padded = int((blocks[:, -1] == PAD).sum()) if blocks.numel() else 0
    return Coverage(len(doc_ids), len(trained), int(blocks.shape[0]), padded, int((blocks[:, 1:] != PAD).sum()),
                    tokens_cut, [{"id": doc_ids[j], "source": doc_source[j], "reason": r} for j, r in left],
                    sorted(set(doc_source) - with_signal))
