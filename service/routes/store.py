"""The served store and the service's own figures: ``GET /v1/store``,
``GET /v1/stats``, and ``POST /v1/admin/reload`` (hot swap:
``Runtime.reload``)."""

from __future__ import annotations

from fastapi import APIRouter

from influence.errors import StoreError

from ..deps import AdminKey, AnyKey, QueryReportKey, RuntimeDep, ServedDep
from ..errors import invalid
from ..schemas import ReloadResponse, StoreInfo

router = APIRouter()


@router.get("/v1/store", response_model=StoreInfo)
async def store(p: AnyKey, rt: RuntimeDep, served: ServedDep):
    """The store version being served and what it was built from (``root``,
    the store's path on the server, for admin keys only)."""
    att, m = served.att, served.att.manifest
    return {"version": m.version, "created_at": m.created_at, "root": str(rt.s.store) if p.allows("admin") else None,
            "device": str(att.device), "readout_dtype": str(att.tangent_dtype).removeprefix("torch."),
            "model": m.model.model_dump(), "classes": m.classes,
            "n_examples": len(m.example_source), "n_sources": len(m.source_ids), "source_ids": m.source_ids,
            "members": m.members, "dtype": m.dtype, "method": m.method, "recipe": m.recipe, "data": m.data,
            "audit": served.audit, "cost": served.form.cost_card(att, rt.s)}


@router.get("/v1/stats")
async def stats(p: QueryReportKey, rt: RuntimeDep):
    """Throughput, latency percentiles (ms), batch sizes, cache hit rate; the
    journal: records waiting, replayed, and appends its disk refused (503s)."""
    return {**rt.stats.snapshot(), "store_version": rt.serving(), "queue_queries": rt.batcher.queued,
            "dropped_blocks": rt.batcher.dropped_pieces, "redis": rt.ledger.healthy,
            "journal_entries": rt.ledger.journal.entries, "journal_replayed": rt.ledger.replayed,
            "journal_failed": rt.ledger.journal.failed}


@router.post("/v1/admin/reload", response_model=ReloadResponse)
async def reload(p: AdminKey, rt: RuntimeDep, version: str | None = None, allow_kind_change: bool = False,
                 allow_source_change: bool = False):
    """Load the store's CURRENT version (or ``version``: a version name
    published under the store root such as ``v000002``, never a path) and
    switch to it; in-flight requests finish on the version they started
    with. A version of another model kind or another source set than the
    served one is a 409 unless ``allow_kind_change`` / ``allow_source_change``
    is true; credit recorded for sources no longer served stays in the
    aggregates (reports list it, ``/v1/sources`` marks it ``in_store:
    false``). With several serving processes (``workers``) every one of
    them switches; the answer comes once all do (``processes``)."""
    try:
        return await rt.reload_all(version, allow_kind_change, allow_source_change)
    except StoreError:
        if version:
            raise invalid("version", "this store version cannot be loaded", "query", 404) from None
        raise
