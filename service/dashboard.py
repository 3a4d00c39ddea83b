"""The operator dashboard and the query playground.

``GET /dashboard`` serves a static page (``service/static/``, shipped with
the package, no CDN) that polls the API with the key the user types in (kept
in ``sessionStorage``, sent as ``Authorization: Bearer``): live figures from
``/v1/stats``, ``/v1/store`` and ``/v1/sources``, the compensation report
(JSON table, CSV download) and a playground that submits drawn or picked
inputs to ``POST /v1/attributions``.

Small endpoints feed the playground (query, report or admin key; ``names``
also a publisher key):

* ``GET /v1/playground/examples?n=`` — a few inputs to pick: the store's
  held-out sample (the digits test split for the built-in digits) where it
  has one, else rows of the store's training data;
* ``GET /v1/playground/training/{i}`` — training example ``i`` of the
  served store (its input, label and source), to render the most
  influential examples of an answer as images;
* ``GET /v1/playground/passages?n=`` — a text store's passages to try:
  the store's held-out sample (``heldout.json``: windows of held-out Brown
  samples for the shipped corpus) where it has one, else the first words of
  training documents, labelled so;
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
from pathlib import Path

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from influence.errors import StoreError
from influence.heldout import spread
from influence.store import open_store
from influence.text.attributor import TextAttributor

from .deps import AnyKey, QueryReportKey, RuntimeDep, ServedDep
from .errors import invalid, unavailable
from .heldout import names, passages, vector_sample
from .runtime import Runtime, Served
from .schemas import PassagesResponse, SourceNames

STATIC_DIR = Path(__file__).parent / "static"

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


def _att(served: Served):
    """The served vector store's attributor (404 for another kind)."""
    form = served.form
    if not form.playground:
        raise invalid("store", f"the playground's examples are model inputs of a vector store; this store is of "
                      f"kind {form.name} (its passages: GET /v1/playground/passages; send its text queries to "
                      "POST /v1/attributions)", "path", 404)
    return served.att


def _image(att) -> dict | None:
    """The grid to draw an input on: the dataset's (``data.image``), else a square of pixels at scale 1, else None."""
    if (image := att.manifest.data.get("image")) is not None:
        return image
    side = math.isqrt(att.spec.in_dim)
    return {"height": side, "width": side, "scale": 1} if side * side == att.spec.in_dim else None


@router.get("/dashboard", include_in_schema=False)
async def dashboard_page():
    """The dashboard (static HTML; the figures come from the keyed API)."""
    return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/dashboard/", include_in_schema=False)
async def dashboard_slash():
    return RedirectResponse("/dashboard", status_code=308)


@router.get("/v1/playground/examples", tags=["playground"])
async def playground_examples(request: Request, p: QueryReportKey, rt: RuntimeDep, served: ServedDep,
                              n: int = Query(10, ge=1, le=50)):
    """A few inputs to try, one per class first: the store's held-out sample
    (``kind: heldout``; the digits test split for the built-in digits) where
    it has one, else rows of its training data. ``image`` gives the grid to
    draw inputs on (the dataset's; else a square at scale 1; null when the
    input is not square); ``scale``: the model sees pixels / scale."""
    att = _att(served)
    man, held = att.manifest, vector_sample(att)
    if held is not None:
        X, y, _ = held
        origin, prefix = "heldout", "test"
    else:
        X, y = await _training(request, rt, att)
        if X is None:
            raise invalid("store", "this store holds no training data to offer as examples", "path", 404)
        origin, prefix = "training", "train"
    rows = spread(y, n) if y is not None else list(range(min(n, len(X))))
    return {"store_version": att.version, "kind": origin, "in_dim": att.spec.in_dim, "classes": man.classes,
            "image": _image(att), "note": held[2] if held is not None else None,
            "examples": [{"id": f"{prefix}-{i}", "label": None if y is None else man.classes[int(y[i])],
                          "input": [float(v) for v in X[i]]} for i in rows]}


async def _training(request: Request, rt: Runtime, att) -> tuple[np.ndarray | None, np.ndarray | None]:
    state: _Training = request.app.state.playground_training
    try:
        return await state.get(rt.s.store, att.version)
    except StoreError:
        raise unavailable(f"store version {att.version} cannot be read from disk", 2) from None


@router.get("/v1/playground/training/{index}", tags=["playground"])
async def playground_training(index: int, request: Request, p: QueryReportKey, rt: RuntimeDep, served: ServedDep):
    """Training example ``index`` (a row of the served store, as in the
    ``examples`` of an attribution): its input, label and source."""
    att = _att(served)
    if not 0 <= index < att.n_examples:
        raise invalid("index", f"must be in [0, {att.n_examples})", "path", 404)
    X, y = await _training(request, rt, att)
    if X is None:
        raise invalid("index", "this store holds no training data (store.include_training_data was off)", "path",
                      404)
    man = att.manifest
    return {"store_version": att.version, "index": index,
            "label": None if y is None else man.classes[int(y[index])],
            "source": man.source_ids[man.example_source[index]],
            "image": _image(att),
            "input": [float(v) for v in X[index]]}


@router.get("/v1/playground/names", tags=["playground"], response_model=SourceNames)
async def playground_names(p: AnyKey, served: ServedDep):
    """The served store's sources and their display names (what the dashboard
    labels credit shares, trends and reports with)."""
    att = served.att
    return {"store_version": att.version,
            "sources": [{"id": i, "name": n} for i, n in names(att.manifest).items()]}


@router.get("/v1/playground/passages", tags=["playground"], response_model=PassagesResponse)
async def playground_passages(p: QueryReportKey, served: ServedDep, n: int = Query(8, ge=1, le=50)):
    """A text store's passages to try (see ``PassagesResponse``): held-out
    windows for a store of the shipped Brown corpus, one per genre first;
    else the first words of training documents, one per source first."""
    att, form = served.att, served.form
    if not isinstance(att, TextAttributor):
        raise invalid("store", f"passages are text for a text store; this store is of kind {form.name} (its "
                      "examples: GET /v1/playground/examples)", "path", 404)
    return await asyncio.to_thread(passages, att, n)


def install(app: FastAPI) -> None:
    """Add the dashboard page, its static files and the playground endpoints."""
    app.state.playground_training = _Training()
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
