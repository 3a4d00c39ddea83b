"""Packed rows (issue 25, memory that stays packed): a store's quantised
per-document rows stay as their codes in memory and the readout dequantises
one block of rows at a time. The answers are those of the fully dequantised
rows (exactly where the output layer is frozen, to float32 rounding where a
trained output layer's term is a GEMM per block), and what is resident is
the codes."""

from __future__ import annotations

import pytest
import torch

from influence.quant import PackedRows, dequantize, quantize
from influence.store import open_store
from influence.text.attributor import TextAttributor
from influence.text.lm_math import jvp_scores

from ..text_corpus import build_text_store


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_a_block_of_packed_rows_is_those_rows_of_the_dequantised_matrix(bits):
    x = torch.randn(37, 300, generator=torch.Generator().manual_seed(bits))
    q = quantize(x, bits, 64)
    rows, full = PackedRows(q), dequantize(q)
    assert rows.shape == (37, 300) and len(rows) == 37 and rows.nbytes == q.nbytes
    for s, e in [(0, 37), (0, 8), (8, 16), (30, 37), (36, 37), (5, 5)]:
        assert torch.equal(rows[s:e], full[s:e])
    with pytest.raises(ValueError, match="contiguous"):
        rows[::2]


@pytest.fixture(scope="module")
def quantised_text_store(tmp_path_factory):
    """The tiny GPT store with 3-bit rows, one per document (no basis), and per-source rows."""
    return build_text_store(tmp_path_factory.mktemp("packed"), "method.compress_rank=0", "store.quant_bits=3")


def test_a_packed_store_answers_as_the_dequantised_one(quantised_text_store):
    dense = TextAttributor(open_store(quantised_text_store), "cpu")
    packed = TextAttributor(open_store(quantised_text_store, packed=True), "cpu")
    assert isinstance(packed.rows[0], PackedRows) and torch.is_tensor(dense.rows[0])
    qs = [dense.encode(text="w1 w2 w3 w4 w5"), dense.encode(text="s0x1 s1x2 w3"), dense.encode(text="w7 s2x3")]
    a, b = dense.score(qs, per_token=True), packed.score(qs, per_token=True)
    assert torch.equal(a.logprob, b.logprob) and torch.equal(a.sources, b.sources)  # (per-source rows: dense)
    # the protocol GPT trains its tied output layer: that term is one GEMM per block of rows instead of one
    scale = a.examples.abs().max()
    assert (a.examples - b.examples).abs().max() <= 1e-5 * scale
    for ta, tb in zip(a.token_examples, b.token_examples, strict=True):
        assert (ta - tb).abs().max() <= 1e-5 * ta.abs().max()
    resident = sum(r.nbytes for r in packed.rows)
    assert resident < sum(r.numel() * r.element_size() for r in dense.rows) / 8  # 3-bit codes + scales


def test_packed_rows_read_exactly_where_the_output_layer_is_frozen(quantised_text_store):
    """Through the readout itself: a model whose head is not trained (LoRA's case) reads packed rows to the bit."""
    att = TextAttributor(open_store(quantised_text_store), "cpu")
    head = att.model.head(att.params[0])[2]
    params = {k: v for k, v in att.params[0].items()}
    layout = att.spec.layout()
    U = att.rows[0].clone()
    cols = layout.flatten({k: (torch.ones_like(v) if k == head else torch.zeros_like(v))
                           for k, v in layout.unflatten(U[:1]).items()})[0].bool()
    U[:, cols] = 0  # rows that leave the output layer alone
    q = quantize(U, 3, 128)
    x, mask = att.batch([att.encode(text="w1 w2 w3 w4 w5 w6")])
    got = jvp_scores(att.model, params, PackedRows(q), x, mask)
    want = jvp_scores(att.model, params, dequantize(q), x, mask)
    assert torch.equal(got, want)
