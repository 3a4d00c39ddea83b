"""``/healthz`` (liveness), ``/readyz`` (readiness: the store is resident)
and ``/metrics`` (Prometheus); none of them needs the store."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..auth import require
from ..deps import RuntimeDep, current_runtime
from ..errors import unavailable

router = APIRouter()


@router.get("/healthz")
async def healthz():
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request):
    """200 once the store is resident on its device, else 503."""
    rt = current_runtime(request)
    served = rt.served if rt is not None else None
    if served is None:
        raise unavailable("store not loaded: loading", 2, "not_ready")
    return {"status": "ready", "store_version": served.version, "device": str(served.att.device),
            "redis": rt.ledger.healthy, "journal_entries": rt.ledger.journal.entries,
            "batch_invariant": served.batch_invariant, "process": rt.ledger.journal.slot}


@router.get("/metrics")
async def metrics(request: Request, rt: RuntimeDep):
    """Prometheus text format."""
    if not rt.s.metrics_public:
        await require("report")(request)
    rt.stats.m_journal.set(rt.ledger.journal.entries)
    rt.stats.m_queue.set(rt.batcher.queued)
    return Response(rt.stats.prometheus(), media_type="text/plain; version=0.0.4; charset=utf-8")
