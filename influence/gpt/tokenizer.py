"""Word-level tokenizer of the language-model protocol (``docs/lm-protocol.md``).

Vocabulary: count every token of the training documents (whole documents);
sort by (count descending, word ascending as a plain string comparison); the
first ``V - 1`` words get ids ``1 .. V-1``; id 0 is ``<unk>`` for every other
word. ``V = 2000``.

``encode(words)`` maps already-tokenised words. ``encode_text(raw)`` tokenises
raw text the way the Brown corpus does, then encodes:

1. lowercase; curly quotes → straight (``’`` → ``'``); a ``"`` that opens a
   word becomes the token ````` `` `````, any other ``"`` becomes ``''`` (the
   corpus writes double quotes as ````` `` ````` and ``''``);
2. split on whitespace;
3. a chunk that is a vocabulary word or a *kept word* (a token of the
   training documents that carries edge punctuation, e.g. ``u.s.``, ``mr.``,
   ``jr.``, ``'em``; stored with the vocabulary) stays whole — so
   whitespace-joined corpus tokens encode as the corpus does;
4. otherwise punctuation is peeled off its edges, repeatedly: on the left
   ````` `` `````, ````` ` `````, ``(``, ``[``; on the right ``,`` ``;``
   ``:`` ``?`` ``!`` ``)`` ``]`` ``''`` and a final ``.`` (kept when the rest
   has another ``.``, as in ``u.s.a.``); ``--`` inside a chunk is a token of
   its own. Apostrophes inside words stay (``don't``, ``atlanta's``), as do
   ``$`` and ``%`` (``$5``, ``8%``) and inner commas of numbers (``1,119``),
   as in the corpus. Each peeled piece is checked again against step 3.

``encode_text(text, pretokenized=True)`` does steps 1 (lowercase only) and 2:
the protocol's tokens of whitespace-separated words.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable

from ..text.pieces import Spans, tile

UNK = "<unk>"
_LEFT = ("``", "`", "(", "[")
_RIGHT = ("''", ",", ";", ":", "?", "!", ")", "]")
_ATOMS = frozenset(_LEFT + _RIGHT + (".", "--"))
_EDGE = re.compile(r"^[`(\[]|[,;:?!)\].']$")


class Tokenizer:
    """``words[i]`` is the word of id ``i``; ``words[0] == "<unk>"``."""

    unk_id = 0  # every out-of-vocabulary word encodes to it
    lossless = False  # a token is a lowercased corpus word (or <unk>), not the text's own characters

    def __init__(self, words: list[str], kept: Iterable[str] = ()):
        if not words or words[0] != UNK:
            raise ValueError("the first word must be <unk>")
        self.words = list(words)
        self.ids = {w: i for i, w in enumerate(self.words)}
        if len(self.ids) != len(self.words):
            raise ValueError("duplicate words in the vocabulary")
        self.kept = frozenset(kept)

    @classmethod
    def build(cls, docs: Iterable[Iterable[str]], vocab_size: int = 2000) -> Tokenizer:
        """Counts over every token of ``docs`` (lists of words)."""
        counts: Counter[str] = Counter()
        for d in docs:
            counts.update(d)
        order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        words = [UNK] + [w for w, _ in order[: vocab_size - 1]]
        kept = sorted(w for w in counts if len(w) > 1 and _EDGE.search(w) and w not in words)
        return cls(words, kept)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, words: Iterable[str]) -> list[int]:
        ids = self.ids
        return [ids.get(w, 0) for w in words]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[int(i)] for i in ids]

    # -- raw text ----------------------------------------------------------------
    def _known(self, w: str) -> bool:
        return w in self.ids or w in self.kept

    def _split(self, chunk: str) -> list[str]:
        if self._known(chunk) or chunk in _ATOMS:
            return [chunk]
        if "--" in chunk.strip("-") and chunk != "--":
            parts = [p for p in re.split(r"(--)", chunk) if p]
            return [t for p in parts for t in self._split(p)]
        for p in _LEFT:
            if chunk.startswith(p) and len(chunk) > len(p):
                return [p] + self._split(chunk[len(p) :])
        for p in _RIGHT:
            if chunk.endswith(p) and len(chunk) > len(p):
                return self._split(chunk[: -len(p)]) + [p]
        if chunk.endswith(".") and len(chunk) > 1 and "." not in chunk[:-1]:
            return self._split(chunk[:-1]) + ["."]
        return [chunk]

    def tokenize(self, text: str, pretokenized: bool = False) -> list[str]:
        """Words of raw ``text`` (see the module docstring)."""
        text = text.lower()
        if pretokenized:
            return text.split()
        text = text.replace("\u2019", "'").replace("\u2018", "`").replace("\u201c", "``").replace("\u201d", "''")
        text = re.sub(r'(^|(?<=[\s(\[]))"', "`` ", text).replace('"', " ''")
        out: list[str] = []
        for chunk in text.split():
            out += self._split(chunk)
        return out

    def encode_text(self, text: str, pretokenized: bool = False) -> list[int]:
        return self.encode(self.tokenize(text, pretokenized))

    def spans(self, text: str, pretokenized: bool = False) -> Spans:
        """Per token of ``tokenize(text, pretokenized)``: ``(start, end)``
        characters of ``text``, tiling it (``pieces.tile``: a word's span
        runs from the end of the one before it to its own last character).
        Each word is found, in order, in the text as step 1 rewrites it
        (lowercased, quotes as the corpus writes them), character by
        character so that positions map back; a word not found there (a
        case mapping that depends on context) ends where the one before it did."""
        norm, where = [], []
        for i, c in enumerate(text):
            if not pretokenized:
                c = {"\u2019": "'", "\u2018": "`", "\u201c": "``", "\u201d": "''"}.get(c, c)
                if c == '"':
                    c = "``" if i == 0 or text[i - 1].isspace() or text[i - 1] in "([" else "''"
            c = c.lower()
            norm.append(c)
            where += [i] * len(c)
        flat, ends, at = "".join(norm), [], 0
        for w in self.tokenize(text, pretokenized):
            k = flat.find(w, at)
            if k >= 0:
                at = k + len(w)
                ends.append(where[at - 1] + 1)
            else:
                ends.append(ends[-1] if ends else 0)
        return tile(ends, len(text))

    # -- storage -----------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"kind": "word", "words": self.words, "kept": sorted(self.kept)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str | dict) -> Tokenizer:
        d = json.loads(s) if isinstance(s, str) else s
        if d.get("kind") != "word":
            raise ValueError(f"not a word tokenizer: kind {d.get('kind')!r}")
        return cls(d["words"], d.get("kept", ()))

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and self.words == other.words and self.kept == other.kept

    __hash__ = None  # type: ignore[assignment]
