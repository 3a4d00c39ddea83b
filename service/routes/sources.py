"""``GET /v1/sources`` and ``GET /v1/sources/{source_id}``: live per-source
figures, scoped to the caller's key, poll friendly (the view and its ETag:
``service.sources``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..auth import Principal
from ..deps import ReportKey, RuntimeDep, ServedDep
from ..errors import forbidden, invalid
from ..ledger import OUTAGE
from ..runtime import Runtime, Served
from ..schemas import SourcesResponse, SourceStats
from ..sources import current, etag_for, matches, matches_any, view
from .base import JSONResponse, aggregates_unavailable

router = APIRouter()


async def _sources(request: Request, p: Principal, rt: Runtime, served: Served,
                   star: bool = True) -> tuple[dict, str, bool]:
    """(view, ETag, unchanged); ``star=False``: ``If-None-Match: *`` is left
    to the caller (it matches only a representation that exists)."""
    try:
        rev, bucket = await current(rt)
        tag = etag_for(rev, served.version, bucket, f"{p.source or '*'}|{request.url.path}")
        if matches(request.headers.get("if-none-match"), tag, star):
            return {}, tag, True
        return await view(rt, served, rev, bucket), tag, False
    except OUTAGE:
        raise aggregates_unavailable(rt) from None


@router.get("/v1/sources", response_model=SourcesResponse)
async def sources(request: Request, p: ReportKey, rt: RuntimeDep, served: ServedDep):
    """Live per-source credit, query counts and trend (ETag / If-None-Match)."""
    v, tag, same = await _sources(request, p, rt, served)
    if same:
        return Response(status_code=304, headers={"ETag": tag})
    v = {**v, "sources": [s for s in v["sources"] if p.can_see(s["id"])]}
    return JSONResponse(v, headers={"ETag": tag, "Cache-Control": "no-cache"})


@router.get("/v1/sources/{source_id}", response_model=SourceStats)
async def source(source_id: str, request: Request, p: ReportKey, rt: RuntimeDep, served: ServedDep):
    """One source's figures; 404 for an unknown id."""
    if not p.can_see(source_id):
        raise forbidden()
    v, tag, same = await _sources(request, p, rt, served, star=False)
    if same:
        return Response(status_code=304, headers={"ETag": tag})
    line = next((s for s in v["sources"] if s["id"] == source_id), None)
    if line is None:
        raise invalid("source_id", "unknown source", "path", 404)
    if matches_any(request.headers.get("if-none-match")):  # "*", and the source exists
        return Response(status_code=304, headers={"ETag": tag})
    return JSONResponse(line, headers={"ETag": tag, "Cache-Control": "no-cache"})
