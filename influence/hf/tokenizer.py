"""A Hugging Face fast tokenizer behind the text stores' tokenizer surface
(``tokenize`` → pieces, ``encode`` → ids, ``decode`` → readable pieces), so
the text attributor, ``fa-worker score`` and the service treat word-level and
BPE stores alike. No special tokens are added to queries (a query is scored
as the model saw its training text). ``pretokenized`` text (whitespace-
separated words, e.g. Brown corpus tokens) is joined with single spaces.
A byte-level BPE has no unknown token: every text encodes (``unk_id`` None).
"""

from __future__ import annotations


class HFTokenizer:
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
        """Each id as the text it stands for (byte-level pieces decoded; a
        leading space kept, as in ``" jury"``)."""
        return [self.tok.convert_tokens_to_string([t]) for t in self.tok.convert_ids_to_tokens(list(ids))]
