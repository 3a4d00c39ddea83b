"""A text corpus from a file a user has: JSONL (``influence.datasets.jsonl``),
or a table as Hugging Face ``datasets`` writes it, read offline with
``pyarrow`` (no ``datasets`` install, no hub):

- ``*.parquet``: one Parquet file (``Dataset.to_parquet``, a hub snapshot's shard);
- ``*.arrow``: one Arrow file, IPC stream or file format (``datasets``' cache files);
- a directory: ``Dataset.save_to_disk``'s (``state.json`` lists its ``data-*.arrow``
  files, read in that order), or any directory of ``*.parquet`` / ``*.arrow`` shards
  (read in sorted name order).

Every row is one document with a ``text`` and a ``source`` column and an
optional ``id`` (other names via ``fields``); other columns are ignored.
Errors name the file, the row and the column, as for JSONL. Row numbers
count from 1 over the whole table (shards in order); a row without an id
gets ``row-{n:07d}``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import DataError
from ..text.corpus import VOCAB, LMCorpus
from .brown import brown_corpus
from .jsonl import check_count, corpus_from_records, document_record, read_jsonl

TABLE_SUFFIXES = (".parquet", ".arrow")


def is_text_table(path: Path) -> bool:
    """A path ``read_documents`` reads as a table (not JSONL)."""
    return path.suffix in TABLE_SUFFIXES or path.is_dir()


def read_documents(path: str | Path, fields: tuple[str, str, str] = ("text", "source", "id")) -> list[dict]:
    """Validated records ``{"id", "text", "source", "line"}`` in file order (``line``: the row for tables)."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, "file not found")
    if not is_text_table(p):
        if fields != ("text", "source", "id"):
            raise DataError(p, "a JSONL corpus has the fields text, source and id (column names are for tables)")
        return read_jsonl(p)
    out, seen = [], {}
    for f in _shards(p):
        table = _read_table(f)
        missing = [c for c in fields[:2] if c not in table.column_names]
        if missing:
            raise DataError(f, f"no column {missing[0]!r} (columns: {', '.join(table.column_names)})",
                            column=missing[0])
        cols = [c for c in fields if c in table.column_names]
        for rec in table.select(cols).to_pylist():
            n = len(out) + 1
            out.append(document_record(f, rec, f"row {n}", n, seen, f"row-{n:07d}", fields))
    return check_count(p, out)


def _shards(p: Path) -> list[Path]:
    if p.is_file():
        return [p]
    state = p / "state.json"
    if state.is_file():
        try:
            files = [p / d["filename"] for d in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(state, f"not a datasets state.json ({e})") from None
    else:
        files = sorted(f for f in p.iterdir() if f.suffix in TABLE_SUFFIXES)
    if not files:
        raise DataError(p, "a directory without a state.json or *.parquet / *.arrow files")
    return files


def _read_table(f: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not f.is_file():
        raise DataError(f, "file not found (listed by the dataset)")
    try:
        if f.suffix == ".parquet":
            return pq.read_table(f)
        with pa.memory_map(str(f)) as src:
            try:
                return pa.ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:
                src.seek(0)
                return pa.ipc.open_file(src).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f, f"not a readable {f.suffix[1:]} table: {e}") from None


def corpus_sha256(path: str | Path) -> str:
    """sha256 of a corpus file, or of a directory's files (names and bytes, sorted): what the audit checks."""
    p = Path(path)
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def load_text_corpus(path: str | Path, vocab_size: int = VOCAB) -> LMCorpus:
    """The word-level GPT's :class:`LMCorpus` from any corpus file ``read_documents`` reads."""
    return corpus_from_records(path, read_documents(path), vocab_size)


def word_corpus(name: str | None, path: str | Path | None) -> LMCorpus | None:
    """A corpus for a kind trained from scratch on its own word tokenizer: the
    documents at ``path``, or the built-in ``brown``; None for any other name
    (a store's manifest that records neither)."""
    if path is not None:
        return load_text_corpus(path)
    return brown_corpus() if name == "brown" else None
