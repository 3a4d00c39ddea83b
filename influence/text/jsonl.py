"""User text for the language-model case: a JSONL file, one document per line:

    {"text": "The jury said ...", "source": "new-york-times", "id": "nyt-001"}

``text`` (a non-empty string) and ``source`` (a string: the publisher) are
required; ``id`` (a string or integer) is optional and must be unique. Blank
lines are skipped. Errors name the file, the line and the field
(:class:`influence.errors.DataError`).

Processing follows the protocol (``docs/lm-protocol.md``):

- ids: the given ``id`` (as a string), else ``line-{n:07d}`` (``n`` = line
  number, so that sorting keeps the file order); the split sorts ids as
  strings and holds out every 10th;
- tokens: :meth:`Tokenizer.tokenize` of the text with an empty vocabulary
  (the rule-based splitting alone: lowercase, ``"`` → ````` `` ````` / ``''``,
  punctuation peeled off words). The vocabulary (V = 2000) is then counted
  over the training documents. Re-tokenising a text with the built
  tokenizer gives the same words: its vocabulary holds only such pieces;
- blocks: up to 4 blocks of 65 tokens from the start of each training
  document; *a document shorter than 65 tokens gets no block* (it stays a
  document of its source, with no training signal) and a warning gives the
  count (``LMCorpus.short_docs``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..errors import DataError
from .corpus import BLOCK, VOCAB, LMCorpus, build_corpus
from .tokenizer import UNK, Tokenizer


def read_lines(path: str | Path) -> list[str]:
    """The file's lines as text; a line that is not UTF-8 is an error naming
    its line number and column (not the byte offset into the whole file)."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, "file not found")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(p, f"cannot be read: {e.strerror}") from None
    lines = raw.split(b"\n")
    for n, line in enumerate(lines, start=1):
        try:
            lines[n - 1] = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            bad = line[e.start:e.start + 1]
            raise DataError(p, f"line {n}: not UTF-8 text (byte {e.start + 1} of the line: {bad!r})") from None
    return lines


def read_jsonl(path: str | Path) -> list[dict]:
    """Validated records ``{"id", "text", "source", "line"}`` in file order."""
    p = Path(path)
    lines = read_lines(p)
    out, seen = [], {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(p, f"line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise DataError(p, f"line {n}: expected a JSON object, got {type(rec).__name__}")
        text = rec.get("text")
        if "text" not in rec:
            raise DataError(p, f"line {n}: missing field 'text'", column="text")
        if not isinstance(text, str):
            raise DataError(p, f"line {n}: 'text' must be a string, got {type(text).__name__}", column="text")
        if not text.strip():
            raise DataError(p, f"line {n}: 'text' is empty", column="text")
        if "source" not in rec:
            raise DataError(p, f"line {n}: missing field 'source'", column="source")
        src = rec["source"]
        if not isinstance(src, str) or not src.strip():
            raise DataError(p, f"line {n}: 'source' must be a non-empty string, got {src!r}", column="source")
        if "id" in rec:
            did = rec["id"]
            if isinstance(did, bool) or not isinstance(did, str | int) or str(did) == "":
                raise DataError(p, f"line {n}: 'id' must be a non-empty string or an integer, got {did!r}", column="id")
            did = str(did)
            if did in seen:
                raise DataError(p, f"line {n}: duplicate id {did!r} (first on line {seen[did]})", column="id")
        else:
            did = f"line-{n:07d}"
        seen[did] = n
        out.append({"id": did, "text": text, "source": src.strip(), "line": n})
    if not out:
        raise DataError(p, "no documents (the file is empty)")
    if len(out) < 10:
        raise DataError(p, f"needs at least 10 documents (every 10th is held out), got {len(out)}")
    return out


def load_jsonl_corpus(path: str | Path, vocab_size: int = VOCAB) -> LMCorpus:
    """An :class:`LMCorpus` from a JSONL file (one source level, ``source``:
    the distinct ``source`` values sorted as strings)."""
    recs = read_jsonl(path)
    rules = Tokenizer([UNK])
    words = {r["id"]: rules.tokenize(r["text"]) for r in recs}
    src_ids = sorted({r["source"] for r in recs})
    pos = {s: i for i, s in enumerate(src_ids)}
    sources = {"source": (src_ids, list(src_ids), {r["id"]: pos[r["source"]] for r in recs})}
    corpus = build_corpus(Path(path).stem, [r["id"] for r in recs], words, sources, vocab_size)
    corpus.meta["path"] = str(path)
    if corpus.short_docs:
        warnings.warn(
            f"{path}: {corpus.short_docs} training document(s) shorter than {BLOCK} tokens get no training block",
            stacklevel=2,
        )
    return corpus
