"""A Hugging Face fast tokenizer behind the text stores' tokenizer surface
(``tokenize`` → pieces, ``encode`` → ids, ``decode`` → readable pieces), so
the text attributor, ``fa-worker score`` and the service treat word-level and
BPE stores alike. No special tokens are added to queries (a query is scored
as the model saw its training text). ``pretokenized`` text (whitespace-
separated words, e.g. Brown corpus tokens) is joined with single spaces.
A byte-level BPE has no unknown token: every text encodes (``unk_id`` None).

``spans`` places each token in the text from the tokenizer's own offsets
(``influence.text.pieces``): the pieces ``text[s:e]`` join back into the
text exactly, emoji, CJK and combining marks included, where decoding each
byte-level piece alone gives ``'�'`` for a character split over pieces and a
``' '`` the text never had for the space ``add_prefix_space`` puts in front.
"""

from __future__ import annotations

from ..text.pieces import Spans, squash, tile, unsquash


class HFTokenizer:
    lossless = True  # the spans' pieces are what the model reads (no unknown token, nothing normalised away)

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = len(tok)
        byte_level = "ByteLevel" in tok.backend_tokenizer.to_str()
        self.unk_id = None if byte_level else tok.unk_token_id

    def tokenize(self, text: str, pretokenized: bool = False) -> list[str]:
        if pretokenized:
            text = " ".join(text.split())
        return self.tok.tokenize(text)

    def encode(self, pieces: list[str]) -> list[int]:
        return self.tok.convert_tokens_to_ids(pieces)

    def encode_text(self, text: str, pretokenized: bool = False) -> list[int]:
        return self.encode(self.tokenize(text, pretokenized))

    def decode(self, ids: list[int]) -> list[str]:
        """Each id decoded on its own (without the text: a character split
        over byte-level pieces is ``'�'`` in each; ``spans`` gives the text's
        own pieces)."""
        return [self.tok.convert_tokens_to_string([t]) for t in self.tok.convert_ids_to_tokens(list(ids))]

    def spans(self, text: str, pretokenized: bool = False) -> Spans:
        """Per token of ``tokenize(text, pretokenized)``: its ``(start, end)``
        characters of ``text``, tiling it (``pieces.tile``; pretokenized
        text's spans are mapped back through the joining of its words)."""
        src, where = squash(text) if pretokenized else (text, None)
        enc = self.tok(src, add_special_tokens=False, return_offsets_mapping=True)
        ids = self.encode(self.tokenize(src))
        if list(enc["input_ids"]) != ids:  # (offsets of another tokenisation would misplace every piece)
            raise ValueError("the tokenizer's offsets do not follow its own tokenisation of this text")
        spans = tile([e for _, e in enc["offset_mapping"]], len(src))
        return spans if where is None else unsquash(spans, where, len(text))
