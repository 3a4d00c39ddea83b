"""The API's routes, one module per resource, each an ``APIRouter`` over
the typed dependencies of ``service.deps``. ``ROUTERS`` is what
``create_app`` includes, in this order (the OpenAPI document's order);
a new resource is a module here and one line below."""

from __future__ import annotations

from . import attributions, health, reports, sources, store, whatif

ROUTERS = (
    health.router,  # /healthz, /readyz, /metrics
    attributions.router,  # POST /v1/attributions
    sources.router,  # /v1/sources, /v1/sources/{source_id}
    reports.router,  # /v1/reports/compensation
    store.router,  # /v1/store, /v1/stats, POST /v1/admin/reload
    whatif.router,  # POST /v1/whatif
)
