"""``GET /v1/reports/compensation``: each publisher's credit, share and
payout over a period (the figures: ``service.reports``), JSON or CSV."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from ..deps import ReportKey, RuntimeDep, ServedDep
from ..ledger import OUTAGE
from ..reports import compensation, parse_period, parse_pool, to_csv
from ..schemas import CompensationReport
from .base import aggregates_unavailable

router = APIRouter()


@router.get("/v1/reports/compensation", response_model=CompensationReport,
            responses={200: {"content": {"text/csv": {}}}})
async def report(request: Request, start: str, end: str, amount: str, currency: str, p: ReportKey, rt: RuntimeDep,
                 served: ServedDep, format: Literal["json", "csv"] | None = None):
    """Each publisher's credit, share and payout over ``[start, end)`` (UTC)
    for a pool of ``amount`` ``currency``; ``format=csv`` or
    ``Accept: text/csv`` for CSV."""
    s, e = parse_period(start, end, rt.s.bucket_s)
    pool, exp, cur = parse_pool(amount, currency)
    try:
        per = await rt.ledger.buckets(await rt.ledger.bucket_range(s, e))
    except OUTAGE:
        raise aggregates_unavailable(rt) from None
    rep = compensation(s, e, pool, exp, cur, per, served.version, only=p.source)
    if (format or ("csv" if "text/csv" in request.headers.get("accept", "") else "json")) == "csv":
        name = f"compensation_{rep['start'][:10]}_{rep['end'][:10]}.csv"
        return PlainTextResponse(to_csv(rep), media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})
    return rep
