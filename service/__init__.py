"""The REST shell around the readout library: FastAPI app, micro-batcher,
Redis aggregates and reports. ``create_app(settings)`` builds the app;
``python -m service`` serves it. Nothing runs at import time."""

from __future__ import annotations

import influence  # noqa: F401  (first: sets torch's OpenMP wait policy before torch loads)


def create_app(settings=None):
    """See ``service.app.create_app`` (imported lazily)."""
    from .app import create_app as _create

    return _create(settings)
