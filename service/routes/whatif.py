"""``POST /v1/whatif``: what removing or re-weighting sources in training
would do to queries' outputs, first order (the flow: ``service.whatif``)."""

from __future__ import annotations

from fastapi import APIRouter

from ..bodies import checked_route, whatif_shape
from ..deps import QueryReportKey, RuntimeDep, ServedDep
from ..schemas import WhatIfRequest, WhatIfResponse
from ..whatif import whatif

router = APIRouter(route_class=checked_route(whatif_shape))


@router.post("/v1/whatif", response_model=WhatIfResponse)
async def what_if(req: WhatIfRequest, p: QueryReportKey, rt: RuntimeDep, served: ServedDep):
    """The predicted change of each query's output (after minus before, in
    output units) if the sources in ``remove`` were left out of training and
    those in ``weights`` counted that many times: ``Σ_s (w_s − 1) τ(q, s) /
    n`` from the store's per-source scores, ``n`` the training examples
    (vector store) or training target tokens (text store) the mean training
    loss averages over. First order: it does not model the renormalisation
    of the mean over fewer examples nor interactions between sources; the
    answer carries how well such predictions matched real retraining in
    this store's audit (``accuracy``), or says it was not measured. Queries
    inline (as for ``POST /v1/attributions``) or ``sample``: the store's
    held-out queries. Nothing is recorded."""
    return await whatif(served.att, served.form, served.audit, rt.batcher, rt.s, req)
