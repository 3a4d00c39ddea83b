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
from ..gpt.tokenizer import UNK, Tokenizer
from ..text.corpus import BLOCK, VOCAB, LMCorpus, build_corpus


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
        out.append(document_record(p, rec, f"line {n}", n, seen))
    return check_count(p, out)


def document_record(p: Path, rec: dict, where: str, n: int, seen: dict[str, int], default_id: str | None = None,
                    fields: tuple[str, str, str] = ("text", "source", "id")) -> dict:
    """One validated document ``{"id", "text", "source", "line"}`` from ``rec``
    (a JSON line or a table row, ``where`` naming it); ``seen`` maps the ids
    so far to their line / row ``n``. ``fields``: the names of the text,
    source and id fields (a table's columns may differ from JSONL's)."""
    tf, sf, idf = fields
    if tf not in rec:
        raise DataError(p, f"{where}: missing field {tf!r}", column=tf)
    text = rec[tf]
    if not isinstance(text, str):
        raise DataError(p, f"{where}: {tf!r} must be a string, got {type(text).__name__}", column=tf)
    if not text.strip():
        raise DataError(p, f"{where}: {tf!r} is empty", column=tf)
    if sf not in rec:
        raise DataError(p, f"{where}: missing field {sf!r}", column=sf)
    src = rec[sf]
    if not isinstance(src, str) or not src.strip():
        raise DataError(p, f"{where}: {sf!r} must be a non-empty string, got {src!r}", column=sf)
    if rec.get(idf) is not None:
        did = rec[idf]
        if isinstance(did, bool) or not isinstance(did, str | int) or str(did) == "":
            raise DataError(p, f"{where}: {idf!r} must be a non-empty string or an integer, got {did!r}", column=idf)
        did = str(did)
        if did in seen:
            raise DataError(p, f"{where}: duplicate id {did!r} (first at {seen[did]})", column=idf)
    else:
        did = default_id or f"line-{n:07d}"
    seen[did] = where
    return {"id": did, "text": text, "source": src.strip(), "line": n}


def check_count(p: Path, out: list[dict]) -> list[dict]:
    if not out:
        raise DataError(p, "no documents (the file is empty)")
    if len(out) < 10:
        raise DataError(p, f"needs at least 10 documents (every 10th is held out), got {len(out)}")
    return out


def load_jsonl_corpus(path: str | Path, vocab_size: int = VOCAB) -> LMCorpus:
    """An :class:`LMCorpus` from a JSONL file (one source level, ``source``:
    the distinct ``source`` values sorted as strings)."""
    return corpus_from_records(path, read_jsonl(path), vocab_size)


def corpus_from_records(path: str | Path, recs: list[dict], vocab_size: int = VOCAB) -> LMCorpus:
    """``load_jsonl_corpus`` of validated records (``read_jsonl`` or ``documents.read_documents``)."""
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
