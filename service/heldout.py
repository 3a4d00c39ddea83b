"""Queries to try and to ask about, drawn from what the served store was
built from: the digits test split for a store of the built-in digits data,
windows of the held-out Brown samples for a text store built from the
shipped corpus (``brown``: one per held-out document, genres spread;
``brown-ft``, a Hugging Face model fine-tuned on Brown openings: the
benchmark's own 64-word query windows, ``influence.hf.ftdata``, the first of
each held-out document, genres spread), else the first words of training
documents. The dashboard's playground offers them
(``passages``, ``digits_test``); ``POST /v1/whatif``'s ``sample`` uses the
held-out ones only (``queries``)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from influence.errors import DataError
from influence.store import Manifest
from influence.text.attributor import TextAttributor
from influence.text.tokenizer import Tokenizer

from .kinds import Kind
from .schemas import Query, TextQuery

PASSAGE_TOKENS = 48  # corpus tokens per held-out passage (fewer if the store's tokenizer reads more tokens)


def is_digits(att) -> bool:
    return att.manifest.data.get("name") == "digits" and att.spec.in_dim == 64


@lru_cache(maxsize=1)
def digits_test() -> tuple[np.ndarray, np.ndarray]:
    from influence.data import load_digits_test

    return load_digits_test()


def spread(y: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` row indices, one per class first (in class order), then the rest in order."""
    first: dict[int, int] = {}
    for i, c in enumerate(y.tolist()):
        first.setdefault(int(c), i)
    picked = [first[c] for c in sorted(first)][:n]
    taken = set(picked)
    rest = [i for i in range(len(y)) if i not in taken]
    return picked + rest[: n - len(picked)]


def names(man: Manifest) -> dict[str, str]:
    """Source id -> display name (the id where the store names none)."""
    return dict(zip(man.source_ids, man.extra.get("source_names") or man.source_ids, strict=True))


def _window(tokens, length: int) -> list[str]:
    """``length`` tokens from the start of a sample's second sentence, cut
    after the window's last full stop when that is in its second half."""
    toks = list(tokens)
    start = next((i + 1 for i, t in enumerate(toks[: max(0, len(toks) - length)]) if t == "."), 0)
    w = toks[start : start + length]
    ends = [i for i, t in enumerate(w) if t == "." and i >= length // 2]
    return w[: ends[-1] + 1] if ends else w


def _brown_heldout(man: Manifest, n: int) -> list[tuple] | None:
    """Up to ``n`` held-out Brown samples (the store's ``data.heldout_ids``),
    one per genre first -> ``(document id, words, source id, genre name)``;
    None when the store was not built from the shipped Brown corpus."""
    ids = man.data.get("heldout_ids") or []
    if man.data.get("name") not in ("brown", "brown-ft") or not ids:
        return None
    if man.data["name"] == "brown-ft":
        return _brown_ft_heldout(man, n)
    from influence.text.brown import GENRE_IDS, GENRE_NAMES, load_brown

    try:
        by_id = {x.id: x for x in load_brown()}
    except DataError:
        return None
    if not all(i in by_id for i in ids):
        return None
    samples = [by_id[i] for i in ids]
    genre_level = man.data.get("level") == "genre"
    pick = spread(np.array([GENRE_IDS.index(x.genre) for x in samples]), n)
    return [(x.id, _window(x.tokens, PASSAGE_TOKENS), x.genre if genre_level else x.publisher_id,
             GENRE_NAMES[x.genre]) for x in (samples[i] for i in pick)]


def _brown_ft_heldout(man: Manifest, n: int) -> list[tuple] | None:
    """A ``brown-ft`` store's held-out passages: the fine-tuning benchmark's
    query windows (``ftdata.all_query_windows``: 64 corpus words of a
    held-out document, joined with single spaces), the first window of each
    held-out document, one per genre first."""
    from influence.hf.ftdata import all_query_windows, ft_text
    from influence.text.brown import GENRE_IDS, GENRE_NAMES, load_brown

    try:
        text, by_id = ft_text(), {x.id: x for x in load_brown()}
    except DataError:
        return None
    if list(man.data["heldout_ids"]) != list(text.heldout_ids):
        return None  # another split than the shipped benchmark's: nothing to stand on
    first: dict[int, str] = {}
    for d, _, window in all_query_windows(text):
        first.setdefault(d, window)
    docs = [d for d in range(len(text.heldout_ids)) if d in first]
    samples = [by_id[text.heldout_ids[d]] for d in docs]
    genre_level = man.data.get("level") == "genre"
    pick = spread(np.array([GENRE_IDS.index(x.genre) for x in samples]), n)
    return [(samples[i].id, first[docs[i]].split(), samples[i].genre if genre_level else samples[i].publisher_id,
             GENRE_NAMES[samples[i].genre]) for i in pick]


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
    rows = _brown_heldout(man, n)
    kind = "heldout" if rows is not None else "training"
    if rows is None:
        rows = _training_starts(att.documents, n)
    out, unk = [], tok.unk_id  # (None: a byte-level BPE, every text encodes)
    for doc, words, source, genre in rows:
        text, toks = _fit(words, tok, most)
        if len(toks) >= 2:
            oov = 0 if unk is None else sum(i == unk for i in tok.encode(toks))
            out.append({"id": f"{'heldout' if kind == 'heldout' else 'train'}-{doc}", "document": doc, "text": text,
                        "n_tokens": len(toks), "oov": oov, "source": source,
                        "source_name": labels.get(source, source), "genre": genre})
    note = ("windows of held-out Brown samples: the model never trained on them" if kind == "heldout" else
            "no held-out text in this store: the first words of training documents (the model trained on them)")
    return {"store_version": att.version, "kind": kind, "note": note, "max_tokens": most, "passages": out}


def queries(att, kind: Kind, n: int) -> tuple[list, list[str]] | None:
    """Up to ``n`` held-out queries and their ids (``test-<row>``,
    ``heldout-<document>``), or None when the store has no held-out sample."""
    if kind.playground:
        if not is_digits(att):
            return None
        X, y = digits_test()
        rows = range(min(n, len(X)))
        return ([Query(input=[float(v) for v in X[i]], target=int(y[i]), client_id=f"test-{i}") for i in rows],
                [f"test-{i}" for i in rows])
    got = passages(att, n)
    if got["kind"] != "heldout" or not got["passages"]:
        return None
    ps = got["passages"]
    return [TextQuery(text=p["text"], client_id=p["id"]) for p in ps], [p["id"] for p in ps]
