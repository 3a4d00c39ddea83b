"""The typed dependencies the routes take: the runtime, the served store
version (``ready``: the one "store still loading" check) and the API key of
each role set (``service.auth.require``; ``RequestGate`` finds a route's
roles on these before the body is read).

A route declares its key before ``ServedDep`` so that a request without a
valid key hears 401/403 before it hears 503."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .auth import Principal, require
from .errors import unavailable
from .runtime import Runtime, Served


def current_runtime(request: Request) -> Runtime | None:
    """The app's runtime; None before the lifespan has published it."""
    return getattr(request.app.state, "rt", None)


async def get_runtime(request: Request) -> Runtime:
    rt = current_runtime(request)
    if rt is None:  # only an app run without its lifespan (uvicorn publishes it before serving)
        raise unavailable("the service is starting", request.app.state.settings.retry_after_s, "not_ready")
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def ready(rt: RuntimeDep) -> Served:
    """The store version serving this request, or 503 while the store is
    loading. A request keeps this object to its end, across hot swaps."""
    served = rt.served
    if served is None:
        raise unavailable("the store is still loading", rt.s.retry_after_s, "not_ready")
    return served


ServedDep = Annotated[Served, Depends(ready)]

# Keys by the roles a route admits (an admin key is admitted everywhere).
QueryKey = Annotated[Principal, Depends(require("query"))]
ReportKey = Annotated[Principal, Depends(require("report", "publisher"))]
QueryReportKey = Annotated[Principal, Depends(require("query", "report"))]
AnyKey = Annotated[Principal, Depends(require("query", "report", "publisher"))]
AdminKey = Annotated[Principal, Depends(require("admin"))]
