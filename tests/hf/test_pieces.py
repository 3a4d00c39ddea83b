"""Token pieces that join back into the text (issue 28 row 9): a byte-level
BPE's tokens placed by the tokenizer's offsets (``HFTokenizer.spans``), not
each piece decoded alone (which gave ``'�'`` for every character split over
pieces and a ``' '`` the text never had, from ``add_prefix_space``); the
word-level tokenizer's spans; ``TextAttributor.encode``'s ``tokens`` and
``target_spans`` as the service answers them."""

from __future__ import annotations

import pytest

from influence.gpt.tokenizer import Tokenizer
from influence.hf.tokenizer import HFTokenizer
from influence.text.pieces import squash, tile, unsquash

from .conftest import save_tiny_checkpoint

TEXTS = ["the jury said", "café 😀 日本語 e\u0301 x", "  two  spaces \n", "a\nb", "😀😀", "Ελληνικά ✓ 👩‍👩‍👧",
         "\u0301 starts with a combining mark", " leading space", "x"]
DOCS = ["the jury said the city of atlanta was fine é café 日本 😀"] * 20


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    out = save_tiny_checkpoint(tmp_path_factory.mktemp("tok"), DOCS)
    return HFTokenizer(AutoTokenizer.from_pretrained(out))


@pytest.mark.parametrize("text", TEXTS)
def test_hf_pieces_join_back_into_the_text(hf_tok, text):
    spans = hf_tok.spans(text)
    assert len(spans) == len(hf_tok.tokenize(text))
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # contiguous, in order
    assert "".join(text[s:e] for s, e in spans) == text
    assert not any("\ufffd" in text[s:e] for s, e in spans)


def test_hf_pieces_are_the_tokens_text(hf_tok):
    """Each ASCII piece is its token's own text: no leading space the text
    did not have (the old decode gave ' the' for the first token), the
    space before a word belonging to the word."""
    text = "the jury said"
    assert [text[s:e] for s, e in hf_tok.spans(text)] == ["the", " jury", " said"]
    assert hf_tok.decode(hf_tok.encode_text(text))[0] == " the"  # what the answers used to show
    # an emoji over several byte-level pieces: the first piece that completes it holds it, the others are empty
    text = "a 😀"
    pieces = [text[s:e] for s, e in hf_tok.spans(text)]
    assert len(pieces) > 2 and "".join(pieces) == text and pieces[-2:] == [" 😀", ""]


def test_hf_pretokenized_spans_map_back_to_the_original_text(hf_tok):
    text = "  the   jury\tsaid  "
    spans = hf_tok.spans(text, pretokenized=True)
    assert len(spans) == len(hf_tok.tokenize(text, pretokenized=True))
    assert "".join(text[s:e] for s, e in spans) == text
    assert [text[s:e].strip() for s, e in spans] == ["the", "jury", "said"]


def test_tile_and_squash():
    assert tile([3, 3, 5, 4], 7) == [(0, 3), (3, 3), (3, 5), (5, 7)]
    flat, where = squash(" a  b\tc ")
    assert flat == "a b c" and [" a  b\tc "[i] for i in where] == ["a", " ", "b", "\t", "c"]
    assert unsquash([(0, 1), (1, 3), (3, 5)], where, 8) == [(0, 2), (2, 5), (5, 8)]


def test_word_spans_tile_the_text():
    tok = Tokenizer(["<unk>", "the", "jury", "said", ".", "``", "''", "u.s."])
    text = 'He said "the U.S. jury" -- fine. “İt”'
    spans = tok.spans(text)
    words = tok.tokenize(text)
    assert len(spans) == len(words) and "".join(text[s:e] for s, e in spans) == text
    got = [text[s:e].strip() for s, e in spans]
    assert got == ["He", "said", '"', "the", "U.S.", "jury", '"', "--", "fine", ".", "“", "İt", "”"]
    spans = tok.spans("the  jury\tsaid", pretokenized=True)
    assert spans == [(0, 3), (3, 9), (9, 14)]
