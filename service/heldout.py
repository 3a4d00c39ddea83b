"""Queries to try and to ask about: the served store's held-out sample
(``influence.heldout``, the store asset the worker published from its
dataset: the digits test split, windows of held-out Brown samples, ...),
else, for a text store, the first words of training documents. The
dashboard's playground offers them (``passages``, the examples); ``POST
/v1/whatif``'s ``sample`` uses the held-out ones only (``queries``). No
dataset is known here by name."""

from __future__ import annotations

import numpy as np

from influence.gpt.tokenizer import Tokenizer
from influence.heldout import spread
from influence.store import Manifest
from influence.text.attributor import TextAttributor

from .forms import Form
from .schemas import Query, TextQuery


def names(man: Manifest) -> dict[str, str]:
    """Source id -> display name (the id where the store names none)."""
    return dict(zip(man.source_ids, man.extra.get("source_names") or man.source_ids, strict=True))


def vector_sample(att) -> tuple[np.ndarray, np.ndarray, str] | None:
    """A vector store's held-out ``(X (n, d), y (n,), description)``, or None without one."""
    s = att.heldout
    if s is None or not s.queries or s.queries[0].input is None:
        return None
    X, y = s.arrays()
    return X, y, s.description


def _text_sample(att, n: int) -> tuple[list[tuple], str] | None:
    """The first ``n`` held-out texts ``(document, words, source, genre)`` and their description, or None."""
    s = att.heldout
    if s is None or not s.queries or s.queries[0].text is None:
        return None
    return [(q.document, q.text.split(" "), q.source, q.genre) for q in s.queries[:n]], s.description


def _training_starts(docs: list[dict], n: int) -> list[tuple]:
    """The first words of up to ``n`` training documents, one per source
    first (``<unk>`` dropped) -> ``(document id, words, source id, genre)``."""
    order = {v: i for i, v in enumerate(sorted({d["source"] for d in docs}))}
    pick = spread(np.array([order[d["source"]] for d in docs]), n)
    return [(str(d["id"]), [w for w in d.get("snippet", "").split() if w != "<unk>"], d["source"], d.get("genre"))
            for d in (docs[i] for i in pick)]


def _fit(words: list[str], tok: Tokenizer, most: int) -> tuple[str, list[str]]:
    """The longest prefix of ``words`` that the tokenizer reads as at most
    ``most`` tokens -> (its text, its tokens)."""
    while True:
        text = " ".join(words)
        toks = tok.tokenize(text)
        if len(toks) <= most or len(words) <= 1:
            return text, toks
        words = words[:-1]


def passages(att: TextAttributor, n: int) -> dict:
    man, tok, most = att.manifest, att.tokenizer, att.spec.context + 1
    labels = names(man)
    got = _text_sample(att, n)
    origin = "heldout" if got is not None else "training"
    rows, note = got if got is not None else (_training_starts(att.documents, n), None)
    out, unk = [], tok.unk_id  # (None: a byte-level BPE, every text encodes)
    for doc, words, source, genre in rows:
        text, toks = _fit(words, tok, most)
        if len(toks) >= 2:
            oov = 0 if unk is None else sum(i == unk for i in tok.encode(toks))
            out.append({"id": f"{'heldout' if origin == 'heldout' else 'train'}-{doc}", "document": doc, "text": text,
                        "n_tokens": len(toks), "oov": oov, "source": source,
                        "source_name": labels.get(source, source), "genre": genre})
    note = note or "no held-out text in this store: the first words of training documents (the model trained on them)"
    return {"store_version": att.version, "kind": origin, "note": note, "max_tokens": most, "passages": out}


def queries(att, form: Form, n: int) -> tuple[list, list[str]] | None:
    """Up to ``n`` held-out queries and their ids (``test-<row>``,
    ``heldout-<document>``), or None when the store has no held-out sample."""
    if form.playground:
        if vector_sample(att) is None:
            return None
        qs = att.heldout.queries[:n]
        return [Query(input=q.input, target=q.target, client_id=q.id) for q in qs], [q.id for q in qs]
    got = passages(att, n)
    if got["kind"] != "heldout" or not got["passages"]:
        return None
    ps = got["passages"]
    return [TextQuery(text=p["text"], client_id=p["id"]) for p in ps], [p["id"] for p in ps]
