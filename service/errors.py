"""Every error the service answers with, mapped to HTTP in one place.

Body of every 4xx/5xx::

    {"error": {"status": 422, "code": "invalid_request",
               "message": "queries[0].input: expected 64 values, got 3",
               "fields": [{"path": "queries[0].input", "in": "body",
                           "reason": "expected 64 values, got 3"}]}}

``fields`` names the offending field paths (``a.b[2].c``), or the header
(``"in": "header"``), and is an empty list when no single field is at fault
(405, the 404 of an unknown route, 409, 503, 504, 500). It holds at most
``MAX_FIELD_ERRORS`` entries; ``fields_omitted`` then says how many more
there were. A body that
cannot be parsed is a 422 naming ``body`` (invalid JSON, nesting too deep,
not UTF-8); a body that is not JSON at all a 415 naming ``content-type``.
A 5xx never carries a stack trace or exception text.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from influence.errors import QueryError, StoreError

log = logging.getLogger("service")


class ApiError(Exception):
    """An answer other than 2xx. ``fields``: ``[(path, reason)]``."""

    def __init__(self, status: int, code: str, message: str, fields: list[tuple[str, str]] = (),
                 where: str = "body", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields, self.where, self.headers = list(fields), where, headers or {}


def invalid(path: str, reason: str, where: str = "body", status: int = 422) -> ApiError:
    """A 4xx naming one bad field."""
    return ApiError(status, "invalid_request", f"{path}: {reason}", [(path, reason)], where)


def unavailable(message: str, retry_after: int = 1, code: str = "unavailable") -> ApiError:
    """503 with ``Retry-After`` seconds."""
    return ApiError(503, code, message, headers={"Retry-After": str(retry_after)})


def field_path(loc) -> str:
    """``("body", "queries", 0, "input")`` -> ``queries[0].input``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


MAX_FIELD_ERRORS = 20  # fields listed in one error answer; the rest are counted


def forbidden() -> ApiError:
    """403, the same body whatever the reason (unknown key, role, another publisher's line)."""
    return ApiError(403, "forbidden", "authorization: forbidden", [("authorization", "forbidden")], "header")


def _body(status: int, code: str, message: str, fields=(), where: str = "body") -> dict:
    fields = list(fields)
    err = {"status": status, "code": code, "message": message,
           "fields": [{"path": f[0], "in": f[2] if len(f) > 2 else where, "reason": f[1]}
                      for f in fields[:MAX_FIELD_ERRORS]]}
    if len(fields) > MAX_FIELD_ERRORS:
        err["fields_omitted"] = len(fields) - MAX_FIELD_ERRORS
    return {"error": err}


def _unparsable(cause: BaseException) -> str:
    """Why a body that is not a JSON syntax error could not be parsed."""
    if isinstance(cause, RecursionError):
        return "invalid JSON: nesting too deep"
    if isinstance(cause, UnicodeDecodeError):
        return "body is not valid UTF-8"
    return "body is not valid JSON"


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(_body(err.status, err.code, err.message, err.fields, err.where), err.status, err.headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               406: "not_acceptable", 408: "timeout", 413: "too_large", 415: "unsupported_media_type",
               431: "headers_too_large"}


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into the body above."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        fields, errors = [], exc.errors()
        for e in errors[:MAX_FIELD_ERRORS]:
            loc = list(e.get("loc", ()))
            where = str(loc[0]) if loc and loc[0] in ("body", "query", "path", "header") else "body"
            loc = loc[1:] if loc and loc[0] == where else loc
            # drop pydantic's union-member tags such as "function-after[...]"
            loc = [p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("int", "float", "str")))]
            msg = e.get("msg", "invalid value")
            if e.get("type") == "json_invalid":
                msg, loc = f"body is not valid JSON (at character {loc[0] if loc else 0})", []
            fields.append((field_path(loc), msg, where))
        first = f"{fields[0][0]}: {fields[0][1]}" if fields else "invalid request"
        body = _body(422, "invalid_request", first, fields)
        if len(errors) > MAX_FIELD_ERRORS:
            body["error"]["fields_omitted"] = len(errors) - MAX_FIELD_ERRORS
        return JSONResponse(body, 422)

    @app.exception_handler(QueryError)
    async def _query(request: Request, exc: QueryError):
        return JSONResponse(_body(422, "invalid_request", str(exc), [(exc.field, exc.problem)]), 422)

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError):
        log.error("store error: %s", exc)
        return JSONResponse(_body(503, "store_unavailable", "the influence store is not available"), 503,
                            {"Retry-After": "5"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not parse the JSON body
            return error_response(invalid("body", _unparsable(exc.__cause__)))
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(_body(exc.status_code, code, message), exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(_body(500, "internal", "internal error"), 500)
