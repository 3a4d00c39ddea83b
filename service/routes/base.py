"""What several route modules share: the orjson response and the 503 of
aggregates that Redis cannot serve right now."""

from __future__ import annotations

import orjson
from fastapi import Response

from ..errors import ApiError, unavailable
from ..runtime import Runtime


class JSONResponse(Response):
    """JSON encoded by orjson: ~5x faster than ``json.dumps`` for an
    attribution answer (7% of the service's CPU per query before)."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


def aggregates_unavailable(rt: Runtime) -> ApiError:
    return unavailable("aggregates unavailable: Redis unreachable", rt.s.retry_after_s)
