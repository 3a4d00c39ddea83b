"""The two ASGI middlewares in front of every route, outermost first:
``RequestGate`` (header limits, then the API key and content type of the
matched route, before any of the body is read; ``HEAD`` answered as ``GET``
without a body) and ``BodyLimit`` (413 for a body over the limit, 408 for
one that does not arrive in time, before the app reads any of it)."""

from __future__ import annotations

import asyncio
import time

from starlette.datastructures import Headers
from starlette.routing import Match

from .auth import PRINCIPAL_SCOPE_KEY, authorize
from .errors import ApiError, error_response

try:  # FastAPI >= 0.16x keeps an included router as one route of the app; this lists the routes in it
    from fastapi.routing import iter_route_contexts as _leaf_routes
except ImportError:  # older versions copy an included router's routes into the app's list
    def _leaf_routes(routes):
        return iter(routes)


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (declared or sent),
    before the app reads any of it."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 30.0):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_big = error_response(ApiError(413, "too_large", f"body: at most {self.max_bytes} bytes",
                                          [("body", f"at most {self.max_bytes} bytes")]))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await too_big(scope, receive, send)
        chunks, size, deadline = [], 0, time.monotonic() + self.timeout_s
        while True:
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                reason = f"not received within {self.timeout_s:g} s"
                late = ApiError(408, "timeout", f"body: {reason}", [("body", reason)], headers={"Connection": "close"})
                return await error_response(late)(scope, receive, send)
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await too_big(scope, receive, send)
            if not msg.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


JSON_BODY = "application/json"


def _is_json(content_type: str) -> bool:
    """``application/json`` or ``application/*+json``, with no charset but UTF-8 (RFC 8259)."""
    media, *params = content_type.split(";")
    media = media.strip().lower()
    for p in params:
        name, _, value = p.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return media == JSON_BODY or (media.startswith("application/") and media.endswith("+json"))


def _needs(route) -> tuple[tuple[str, ...] | None, bool]:
    """(roles of the route's key check or None, takes a JSON body)."""
    roles, stack = None, [getattr(route, "dependant", None)]
    while stack:
        dep = stack.pop()
        if dep is None:
            continue
        roles = getattr(dep.call, "roles", None) or roles
        stack += dep.dependencies
    return roles, getattr(route, "body_field", None) is not None


DOC_ROLES = ("query", "report", "publisher")  # any key reads the API documents when docs_public is off


def _without_body(send):
    """``send`` for a ``HEAD`` answered as ``GET``: the headers as they are
    (``Content-Length`` included), no body."""

    async def head_send(msg):
        if msg["type"] == "http.response.body":
            if msg.get("more_body"):
                return
            msg = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(msg)

    return head_send


MATCH_CACHE = 4096
_MISS = object()


class RequestGate:
    """ASGI middleware, outside ``BodyLimit``: first the header limits (431
    beyond ``max_headers`` headers or ``max_header_bytes`` bytes), then, for
    the route a request matches, the API key (401/403, with the roles of the
    route's ``require`` dependency; the API documents when ``docs_public``
    is off), then, for a route that takes a JSON body, the ``Content-Type``
    (415 unless ``application/json`` or ``application/*+json`` in UTF-8; a
    body without any content type is refused too) -- all before any of the
    body is read. Routes of included routers count one by one. ``HEAD`` on
    a ``GET`` route is that ``GET`` without the body."""

    def __init__(self, app):
        self.app = app
        self._table: list[tuple[object, tuple[str, ...] | None, bool]] = []  # (route, roles, JSON body)
        self._built_for = -1  # len(app.router.routes) when the table was built
        self._matched: dict[tuple[str, str], tuple[tuple[str, ...] | None, bool] | None] = {}

    def _route_table(self, app) -> list[tuple[object, tuple[str, ...] | None, bool]]:
        # Built on the first request, when every route is registered; again if the app gains some.
        if self._built_for != len(app.router.routes):
            self._table = [(r, *_needs(r)) for r in _leaf_routes(app.router.routes)]
            self._built_for = len(app.router.routes)
            self._matched = {}
        return self._table

    def _match(self, app, scope) -> tuple[tuple[str, ...] | None, bool] | None:
        """The matching route's (roles, JSON body), remembered per (method,
        path): the routes' regular expressions ran for every request before
        (1.4% of the service's CPU at concurrency 32). At most
        ``MATCH_CACHE`` paths are remembered (an unknown path is cheap to match again)."""
        table = self._route_table(app)
        key = (scope["method"], scope["path"])
        if (hit := self._matched.get(key, _MISS)) is not _MISS:
            return hit
        found = next(((ro, js) for r, ro, js in table if r.matches(scope)[0] is Match.FULL), None)
        if len(self._matched) >= MATCH_CACHE:
            self._matched.clear()
        self._matched[key] = found
        return found

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        app, s = scope["app"], scope["app"].state.settings
        found = self._match(app, scope)
        if found is None and scope["method"] == "HEAD":
            as_get = {**scope, "method": "GET"}
            if (found := self._match(app, as_get)) is not None:
                scope, send = as_get, _without_body(send)
        roles, json_body = found or (None, False)
        if not s.docs_public and scope["path"] in _doc_paths(app):
            roles = DOC_ROLES
        headers = Headers(scope=scope)
        try:
            _header_limits(scope["headers"], s.max_headers, s.max_header_bytes)
            if roles is not None and app.state.keys.enabled:
                scope[PRINCIPAL_SCOPE_KEY] = (roles, authorize(app.state.keys, headers, roles))
            if json_body:
                ctype = headers.get("content-type")
                has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
                if (ctype is None and has_body) or (ctype is not None and not _is_json(ctype)):
                    reason = f"expected {JSON_BODY} (UTF-8)" + (f", not {ctype[:100]}" if ctype else "")
                    raise ApiError(415, "unsupported_media_type", f"content-type: {reason}",
                                   [("content-type", reason)], "header")
        except ApiError as e:
            return await error_response(e)(scope, receive, send)
        await self.app(scope, receive, send)


def _doc_paths(app) -> set[str]:
    return {p for p in (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if p}


def _header_limits(raw: list[tuple[bytes, bytes]], most: int, most_bytes: int) -> None:
    """431 naming the headers (or the largest one) beyond the limits."""
    if len(raw) > most:
        reason = f"at most {most} headers, got {len(raw)}"
        raise ApiError(431, "headers_too_large", f"headers: {reason}", [("headers", reason)], "header")
    size = sum(len(k) + len(v) for k, v in raw)
    if size > most_bytes:
        name, value = max(raw, key=lambda kv: len(kv[0]) + len(kv[1]))
        reason = f"headers of at most {most_bytes} bytes together, got {size} ({len(value)} in this one)"
        path = name.decode("latin-1")[:100].lower()
        raise ApiError(431, "headers_too_large", f"{path}: {reason}", [(path, reason)], "header")
