"""Where each token of a text query sits in the text: character spans that
tile it, so that ``"".join(text[s:e] for s, e in spans) == text``.

A tokenizer reports, per token, where its characters end (``ends``, in
Python characters of the text it was given; several tokens may end at the
same character, e.g. the bytes of one emoji split over two byte-level BPE
pieces, and a tokenizer may skip characters, e.g. the space a SentencePiece
``▁`` stands for). ``tile`` turns those ends into spans that cover the text
exactly: token ``i`` owns ``[end_{i-1}, end_i)`` (the first starts at 0, the
last runs to the end), so the whitespace before a word goes with the word,
as in a GPT-2 piece ``" jury"``, and a token that ends inside a character
another token finishes (a partial UTF-8 sequence) owns the empty span there:
the character belongs to the first token that completes it.
"""

from __future__ import annotations

Spans = list[tuple[int, int]]


def tile(ends: list[int], n_chars: int) -> Spans:
    """``ends`` (one per token, in characters) -> contiguous ``(start, end)``
    spans covering ``[0, n_chars)``; ends that go backwards are clamped."""
    out, prev = [], 0
    for e in ends:
        e = min(max(e, prev), n_chars)
        out.append((prev, e))
        prev = e
    if out:
        out[-1] = (out[-1][0], n_chars)
    return out


def squash(text: str) -> tuple[str, list[int]]:
    """``" ".join(text.split())`` (how pretokenized text is joined) and, per
    character of it, the index of the same character in ``text`` (a joining
    space maps to the first whitespace character it stands for)."""
    out, where, i, n = [], [], 0, len(text)
    while i < n:
        if text[i].isspace():
            j = i
            while j < n and text[j].isspace():
                j += 1
            if out and j < n:
                out.append(" ")
                where.append(i)
            i = j
        else:
            out.append(text[i])
            where.append(i)
            i += 1
    return "".join(out), where


def unsquash(spans: Spans, where: list[int], n_chars: int) -> Spans:
    """Spans over a squashed text -> the same tokens' spans over the original
    text (of ``n_chars`` characters), tiling it (a boundary maps to the
    original position of the character after it)."""
    at = lambda k: where[k] if k < len(where) else n_chars  # noqa: E731
    return tile([at(e) for _, e in spans], n_chars)


def pieces(text: str, spans: Spans) -> list[str]:
    return [text[s:e] for s, e in spans]
