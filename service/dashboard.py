"""The operator dashboard and the query playground.

``GET /dashboard`` serves a static page (``service/static/``, shipped with
the package, no CDN) that polls the API with the key the user types in (kept
in ``sessionStorage``, sent as ``Authorization: Bearer``): live figures from
``/v1/stats``, ``/v1/store`` and ``/v1/sources``, the compensation report
(JSON table, CSV download) and a playground that submits drawn or picked
inputs to ``POST /v1/attributions``.

Small endpoints feed the playground (query, report or admin key; ``names``
also a publisher key):

* ``GET /v1/playground/examples?n=`` — a few inputs to pick: held-out test
  digits when the store was built from the built-in digits data, else the
  first rows of the store's training data;
* ``GET /v1/playground/training/{i}`` — training example ``i`` of the
  served store (its input, label and source), to render the most
  influential examples of an answer as images;
* ``GET /v1/playground/passages?n=`` — a text store's passages to try:
  windows of held-out Brown samples (the store's ``data.heldout_ids``) when
  the store was built from the shipped Brown corpus, else (no held-out text
  in the store) the first words of training documents, labelled so;
* ``GET /v1/playground/names`` — the served store's source ids and display
  names (``source_names``), the labels of the credit and report views.

A text store's playground submits ``{"text": ...}`` or ``{"prompt": ...,
"completion": ...}`` and shows the answer's per-token log-probabilities
(``tokens``, ``token_logprobs``: natural log), publishers and documents.

The page itself needs no key (it holds no data); every figure it shows comes
from the keyed API. ``install(app)`` adds the routes and the static files.
"""

from __future__ import annotations

import asyncio
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from influence.errors import DataError, StoreError
from influence.store import Manifest, open_store
from influence.text.attributor import TextAttributor
from influence.text.tokenizer import Tokenizer

from .auth import Principal, require
from .errors import invalid, unavailable
from .schemas import PassagesResponse, SourceNames

STATIC_DIR = Path(__file__).parent / "static"
DIGITS_SCALE = 16  # the built-in digits: pixel intensities 0..16, the model sees pixels / 16
PASSAGE_TOKENS = 48  # corpus tokens per held-out passage (fewer if the store's tokenizer reads more tokens)

# The page loads only its own files and talks only to its own origin.
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter()


class _Training:
    """The served version's training inputs, loaded on first use (one
    version at a time; the load runs once even under concurrent requests)."""

    def __init__(self):
        self.version: str | None = None
        self.X: np.ndarray | None = None
        self.y: np.ndarray | None = None
        self.lock = asyncio.Lock()

    async def get(self, root: Path, version: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        async with self.lock:
            if self.version != version:
                store = await asyncio.to_thread(open_store, root, version)
                self.X = None if store.X is None else store.X.float().numpy()
                self.y = None if store.y is None else store.y.long().numpy()
                self.version = version
            return self.X, self.y


def _ready(request: Request):
    """The served (attributor, kind), or 503 while the store is loading."""
    rt = request.app.state.rt
    att, kind = rt.att, rt.kind
    if att is None:
        raise unavailable("the store is still loading", rt.s.retry_after_s, "not_ready")
    return att, kind


def _att(request: Request):
    att, kind = _ready(request)
    if not kind.playground:
        raise invalid("store", f"the playground's examples are model inputs of a vector store; this store is of "
                      f"kind {kind.name} (its passages: GET /v1/playground/passages; send its text queries to "
                      "POST /v1/attributions)", "path", 404)
    return att


def _image(in_dim: int, digits: bool) -> dict | None:
    side = math.isqrt(in_dim)
    if side * side != in_dim:
        return None
    return {"height": side, "width": side, "scale": DIGITS_SCALE if digits else 1}


def _is_digits(att) -> bool:
    return att.manifest.data.get("name") == "digits" and att.spec.in_dim == 64


@lru_cache(maxsize=1)
def _digits_test() -> tuple[np.ndarray, np.ndarray]:
    from influence.data import load_digits_test

    return load_digits_test()


def _spread(y: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` row indices, one per class first (in class order), then the rest in order."""
    first: dict[int, int] = {}
    for i, c in enumerate(y.tolist()):
        first.setdefault(int(c), i)
    picked = [first[c] for c in sorted(first)][:n]
    taken = set(picked)
    rest = [i for i in range(len(y)) if i not in taken]
    return picked + rest[: n - len(picked)]


@router.get("/dashboard", include_in_schema=False)
async def dashboard_page():
    """The dashboard (static HTML; the figures come from the keyed API)."""
    return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/dashboard/", include_in_schema=False)
async def dashboard_slash():
    return RedirectResponse("/dashboard", status_code=308)


@router.get("/v1/playground/examples", tags=["playground"])
async def playground_examples(request: Request, n: int = Query(10, ge=1, le=50),
                              p: Principal = Depends(require("query", "report"))):
    """A few inputs to try: held-out digits test examples (one per class
    first) for a store of the built-in digits data, else the first rows of the
    store's training data. ``image`` gives the grid to draw inputs on (null
    when the input is not square); ``scale``: the model sees pixels / scale."""
    att = _att(request)
    man, digits = att.manifest, _is_digits(att)
    if digits:
        X, y = await asyncio.to_thread(_digits_test)
        kind, prefix = "digits-test", "test"
    else:
        X, y = await _training(request, att)
        if X is None:
            raise invalid("store", "this store holds no training data to offer as examples", "path", 404)
        kind, prefix = "training", "train"
    rows = _spread(y, n) if y is not None else list(range(min(n, len(X))))
    return {"store_version": att.version, "kind": kind, "in_dim": att.spec.in_dim, "classes": man.classes,
            "image": _image(att.spec.in_dim, digits),
            "examples": [{"id": f"{prefix}-{i}", "label": None if y is None else man.classes[int(y[i])],
                          "input": [float(v) for v in X[i]]} for i in rows]}


async def _training(request: Request, att) -> tuple[np.ndarray | None, np.ndarray | None]:
    state: _Training = request.app.state.playground_training
    try:
        return await state.get(request.app.state.rt.s.store, att.version)
    except StoreError:
        raise unavailable(f"store version {att.version} cannot be read from disk", 2) from None


@router.get("/v1/playground/training/{index}", tags=["playground"])
async def playground_training(index: int, request: Request, p: Principal = Depends(require("query", "report"))):
    """Training example ``index`` (a row of the served store, as in the
    ``examples`` of an attribution): its input, label and source."""
    att = _att(request)
    if not 0 <= index < att.n_examples:
        raise invalid("index", f"must be in [0, {att.n_examples})", "path", 404)
    X, y = await _training(request, att)
    if X is None:
        raise invalid("index", "this store holds no training data (store.include_training_data was off)", "path",
                      404)
    man = att.manifest
    return {"store_version": att.version, "index": index,
            "label": None if y is None else man.classes[int(y[index])],
            "source": man.source_ids[man.example_source[index]],
            "image": _image(att.spec.in_dim, _is_digits(att)),
            "input": [float(v) for v in X[index]]}


def _names(man: Manifest) -> dict[str, str]:
    """Source id -> display name (the id where the store names none)."""
    return dict(zip(man.source_ids, man.extra.get("source_names") or man.source_ids, strict=True))


@router.get("/v1/playground/names", tags=["playground"], response_model=SourceNames)
async def playground_names(request: Request, p: Principal = Depends(require("query", "report", "publisher"))):
    """The served store's sources and their display names (what the dashboard
    labels credit shares, trends and reports with)."""
    att, _ = _ready(request)
    return {"store_version": att.version,
            "sources": [{"id": i, "name": n} for i, n in _names(att.manifest).items()]}


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
    if man.data.get("name") != "brown" or not ids:
        return None
    from influence.text.brown import GENRE_IDS, GENRE_NAMES, load_brown

    try:
        by_id = {x.id: x for x in load_brown()}
    except DataError:
        return None
    if not all(i in by_id for i in ids):
        return None
    samples = [by_id[i] for i in ids]
    genre_level = man.data.get("level") == "genre"
    pick = _spread(np.array([GENRE_IDS.index(x.genre) for x in samples]), n)
    return [(x.id, _window(x.tokens, PASSAGE_TOKENS), x.genre if genre_level else x.publisher_id,
             GENRE_NAMES[x.genre]) for x in (samples[i] for i in pick)]


def _training_starts(docs: list[dict], n: int) -> list[tuple]:
    """The first words of up to ``n`` training documents, one per source
    first (``<unk>`` dropped) -> ``(document id, words, source id, genre)``."""
    order = {v: i for i, v in enumerate(sorted({d["source"] for d in docs}))}
    pick = _spread(np.array([order[d["source"]] for d in docs]), n)
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


def _passages(att: TextAttributor, n: int) -> dict:
    man, tok, most = att.manifest, att.tokenizer, att.spec.context + 1
    names = _names(man)
    rows = _brown_heldout(man, n)
    kind = "heldout" if rows is not None else "training"
    if rows is None:
        rows = _training_starts(att.documents, n)
    out = []
    for doc, words, source, genre in rows:
        text, toks = _fit(words, tok, most)
        if len(toks) >= 2:
            out.append({"id": f"{'heldout' if kind == 'heldout' else 'train'}-{doc}", "document": doc, "text": text,
                        "n_tokens": len(toks), "oov": sum(i == 0 for i in tok.encode(toks)), "source": source,
                        "source_name": names.get(source, source), "genre": genre})
    note = ("windows of held-out Brown samples: the model never trained on them" if kind == "heldout" else
            "no held-out text in this store: the first words of training documents (the model trained on them)")
    return {"store_version": att.version, "kind": kind, "note": note, "max_tokens": most, "passages": out}


@router.get("/v1/playground/passages", tags=["playground"], response_model=PassagesResponse)
async def playground_passages(request: Request, n: int = Query(8, ge=1, le=50),
                              p: Principal = Depends(require("query", "report"))):
    """A text store's passages to try (see ``PassagesResponse``): held-out
    windows for a store of the shipped Brown corpus, one per genre first;
    else the first words of training documents, one per source first."""
    att, kind = _ready(request)
    if not isinstance(att, TextAttributor):
        raise invalid("store", f"passages are text for a text store; this store is of kind {kind.name} (its "
                      "examples: GET /v1/playground/examples)", "path", 404)
    return await asyncio.to_thread(_passages, att, n)


def install(app: FastAPI) -> None:
    """Add the dashboard page, its static files and the playground endpoints."""
    app.state.playground_training = _Training()
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
