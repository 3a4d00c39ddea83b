"""Text corpora as Hugging Face ``datasets`` writes them (Parquet, Arrow,
``save_to_disk`` directories), read offline with pyarrow: the same records
as the JSONL file, errors naming the file, the row and the column (issue 29,
"datasets as a second input format")."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from influence.datasets.documents import corpus_sha256, read_documents
from influence.datasets.jsonl import read_jsonl
from influence.errors import DataError

from ..text_corpus import write_corpus


def _table(recs: list[dict]) -> pa.Table:
    return pa.table({"id": [r["id"] for r in recs], "source": [r["source"] for r in recs],
                     "text": [r["text"] for r in recs], "url": [f"https://x/{i}" for i in range(len(recs))]})


@pytest.fixture
def corpus(tmp_path):
    path = write_corpus(tmp_path / "docs.jsonl")
    return read_jsonl(path), [json.loads(x) for x in path.read_text().splitlines()]


def _strip(recs):
    return [{k: r[k] for k in ("id", "text", "source")} for r in recs]


def test_parquet_arrow_and_save_to_disk_read_as_the_jsonl(corpus, tmp_path):
    want, raw = corpus
    t = _table(raw)
    pq.write_table(t, tmp_path / "docs.parquet")
    with pa.OSFile(str(tmp_path / "docs.arrow"), "wb") as f, pa.ipc.new_stream(f, t.schema) as w:
        w.write_table(t)
    d = tmp_path / "saved"
    d.mkdir()
    halves = [t.slice(0, 25), t.slice(25)]
    for i, h in enumerate(halves):  # datasets' layout: state.json lists the shards in order
        with pa.OSFile(str(d / f"data-0000{i}-of-00002.arrow"), "wb") as f, pa.ipc.new_stream(f, h.schema) as w:
            w.write_table(h)
    (d / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00002.arrow"},
                                                              {"filename": "data-00001-of-00002.arrow"}]}))
    (d / "dataset_info.json").write_text("{}")
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(halves[0], shards / "train-0.parquet")
    pq.write_table(halves[1], shards / "train-1.parquet")
    for p in (tmp_path / "docs.parquet", tmp_path / "docs.arrow", d, shards):
        got = read_documents(p)
        assert _strip(got) == _strip(want) and [r["line"] for r in got] == list(range(1, 41))
    assert corpus_sha256(d) != corpus_sha256(shards) and corpus_sha256(d) == corpus_sha256(d)


def test_other_column_names_and_missing_ids(corpus, tmp_path):
    _, raw = corpus
    t = pa.table({"content": [r["text"] for r in raw], "domain": [r["source"] for r in raw]})
    pq.write_table(t, tmp_path / "d.parquet")
    got = read_documents(tmp_path / "d.parquet", ("content", "domain", "id"))
    assert got[0]["id"] == "row-0000001" and got[3]["text"] == raw[3]["text"] and got[3]["source"] == raw[3]["source"]


@pytest.mark.parametrize("edit, problem", [
    (lambda c: c.pop("source"), "no column 'source' (columns: id, text)"),
    (lambda c: c["text"].__setitem__(4, None), "row 5: 'text' must be a string, got NoneType"),
    (lambda c: c["text"].__setitem__(6, "   "), "row 7: 'text' is empty"),
    (lambda c: c["id"].__setitem__(9, c["id"][2]), "row 10: duplicate id 'd002' (first at row 3)"),
])
def test_bad_tables_name_the_row_and_column(corpus, tmp_path, edit, problem):
    _, raw = corpus
    cols = {"id": [r["id"] for r in raw], "source": [r["source"] for r in raw], "text": [r["text"] for r in raw]}
    edit(cols)
    pq.write_table(pa.table(cols), tmp_path / "bad.parquet")
    with pytest.raises(DataError) as e:
        read_documents(tmp_path / "bad.parquet")
    assert str(e.value) == f"{tmp_path / 'bad.parquet'}: {problem}" or problem in str(e.value)
    assert "bad.parquet" in str(e.value)


def test_not_a_table_and_an_empty_directory(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="x.parquet: not a readable parquet table"):
        read_documents(tmp_path / "x.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="without a state.json"):
        read_documents(tmp_path / "empty")
