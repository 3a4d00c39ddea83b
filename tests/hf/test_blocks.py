"""No document dropped (issue 24 row 1): blocks of a document's own length,
right-padded with ``PAD``, train and are attributed exactly as their
unpadded tokens would be (float64: the loss, the document gradient and the
curvature product of a padded block equal the unpadded sequence's), and the
corpus's coverage counts everything."""

from __future__ import annotations

import torch

from influence.text.blocks import coverage, document_blocks
from influence.text.causal import PAD, lm_loss
from influence.text.lm_math import LMGaussNewton, block_grads, doc_grads

from .conftest import tiny


def test_every_document_with_a_target_gets_blocks():
    docs = [list(range(2, 12)), [3, 4, 5], [7], [], list(range(2, 9))]  # 10, 3, 1, 0, 7 tokens; size 4
    blocks, owner, left, cut = document_blocks(docs, size=4, max_blocks=2)
    assert owner.tolist() == [0, 0, 1, 4, 4]  # doc 0: 4 + 4 (+ 2 cut by max_blocks); doc 4: 4 + 3
    assert blocks[2].tolist() == [3, 4, 5, PAD] and blocks[4].tolist() == [6, 7, 8, PAD]
    assert cut == 2 and [j for j, _ in left] == [2, 3]
    cov = coverage(blocks, owner, ["a", "b", "c", "d", "e"], ["s", "s", "t", "t", "s"], left, cut)
    assert (cov.documents, cov.documents_trained, cov.blocks, cov.padded_blocks) == (5, 3, 5, 2)
    assert cov.target_tokens == 3 + 3 + 2 + 3 + 2 and cov.empty_sources == ["t"]
    assert [d["id"] for d in cov.left_out] == ["c", "d"]
    one, _, _, _ = document_blocks([[1, 2, 3], [4, 5]], size=64)
    assert one.shape == (2, 3)  # every document shorter than a block: blocks as long as the longest


def test_a_padded_block_trains_like_its_tokens_alone(family):
    model, params = tiny(family)
    gen = torch.Generator().manual_seed(5)
    long = torch.randint(1, 37, (2, 12), generator=gen)
    short = torch.randint(1, 37, (5,), generator=gen)
    padded = torch.cat([long, torch.cat([short, torch.full((7,), PAD)])[None]])
    # the document gradient of the padded block = the short sequence's own (summed token losses)
    g_pad = doc_grads(model, params, padded, torch.tensor([0, 0, 1]), 2)
    # transformers' Llama runs RMSNorm and the attention softmax in float32 inside a float64 model, so its
    # padded and unpadded shapes agree to float32 rounding (a masking error would be of the gradient's size)
    tol = {"rtol": 1e-10, "atol": 1e-12} if family == "gpt2" else \
        {"rtol": 1e-4, "atol": 1e-6 * float(g_pad.abs().max())}
    torch.testing.assert_close(g_pad[1], block_grads(model, params, short[None])[0], **tol)
    torch.testing.assert_close(g_pad[0], block_grads(model, params, long).sum(0), **tol)
    # the mean loss is over the real targets: (2·11 + 4) of them
    want = (lm_loss(model, long, params) * 22 + lm_loss(model, short[None], params) * 4) / 26
    torch.testing.assert_close(lm_loss(model, padded, params), want, rtol=tol["rtol"], atol=1e-12)
    # the Gauss-Newton product: padded positions add nothing, the mean is over the real targets
    U = torch.randn(3, g_pad.shape[1], generator=gen, dtype=torch.float64)
    gn_pad = LMGaussNewton(model, params, padded)(U)
    gn_parts = (LMGaussNewton(model, params, long)(U) * 22 + LMGaussNewton(model, params, short[None])(U) * 4) / 26
    torch.testing.assert_close(gn_pad, gn_parts, rtol=max(tol["rtol"], 1e-9), atol=1e-12 if family == "gpt2"
                               else 1e-6 * float(gn_pad.abs().max()))
