"""The FastAPI app (``create_app(settings)``): settings, lifespan, error
handlers, middleware (``service.middleware``) and the routers
(``service.routes``, ``service.dashboard``).

Nothing happens at import time or in ``create_app`` but building objects:
the lifespan opens the runtime (Redis, ledger, batcher; ``Runtime.open``)
and publishes it as ``app.state.rt`` once complete; the store then loads in
the background and ``/readyz`` answers 200 once it is resident. The key ring
(``app.state.keys``) depends on settings alone and is there from the start:
the middleware checks keys before the lifespan's objects are involved.
"""

from __future__ import annotations

import gc
import json
from contextlib import asynccontextmanager

from fastapi import FastAPI

from influence import __version__

from . import dashboard, errors
from .auth import KeyRing
from .middleware import BodyLimit, RequestGate
from .routes import ROUTERS
from .runtime import Runtime
from .settings import Settings

WORKER_SETTINGS = "FA_WORKER_SETTINGS"
"""The environment variable through which ``python -m service --workers N``
hands its settings (JSON) to each serving process (``worker_app``)."""
WORKER_LOG_LEVEL = "FA_WORKER_LOG_LEVEL"


def worker_app() -> FastAPI:
    """The app of one of several serving processes (``service.__main__.serve_workers``)."""
    import logging
    import os

    logging.basicConfig(level=os.environ.get(WORKER_LOG_LEVEL, "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    return create_app(Settings(_env_file=None, **json.loads(os.environ[WORKER_SETTINGS])))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        rt = await Runtime.open(settings)
        app.state.rt = rt
        # Startup's ~200k objects (torch, fastapi, pydantic) leave the GC's
        # generations: under load a full collection otherwise rescans them about
        # once a second and stalls every request ~100 ms (p99 160 -> 57 ms, bench/load).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await rt.stop()

    app = FastAPI(title="Forward Attribution", version=__version__, lifespan=lifespan,
                  description="Which training data and which publishers shaped a model's answer.")
    app.state.settings, app.state.keys = settings, KeyRing(settings)
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestGate)  # outermost: headers, key and content type before the body
    dashboard.install(app)  # GET /dashboard, its static files, /v1/playground/*
    for router in ROUTERS:
        app.include_router(router)
    return app
