"""The HTTP/1.1 connection protocol the service runs (uvicorn's own, httptools
where installed as uvicorn's "auto" picks, else h11, plus a header deadline):
a connection must deliver a whole request head (request line and headers)
within ``header_timeout_s`` of opening, and again within that of each
response on a kept-alive connection; one that sends nothing, or dribbles its
headers, is closed then (issue 28 row 10: uvicorn closes only idle kept-alive
connections, and a single byte cancels even that, so an unauthenticated
client could hold connections for ever). The body has its own deadline
(``body_timeout_s``, ``service.middleware``). Open connections per process
are capped by uvicorn's ``limit_concurrency`` (``max_connections``: 503 beyond).
"""

from __future__ import annotations

import asyncio


class _HeaderDeadline:
    """Mixed into a uvicorn HTTP protocol: the connection is closed unless a request
    head completes within ``timeout_s`` of opening, or of each response."""

    timeout_s: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None
    _head_seen = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_seen = False
        self._head_timer = self.loop.call_later(self.timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_done(self) -> None:
        self._head_seen = True
        self._disarm()

    def _expire(self) -> None:
        self._head_timer = None
        if not self._head_seen and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def with_header_deadline(timeout_s: float) -> type:
    """uvicorn's HTTP protocol class with the header deadline (httptools if installed, else h11)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base

        class Protocol(_HeaderDeadline, base):
            def on_headers_complete(self) -> None:
                self._head_done()
                super().on_headers_complete()
    except ImportError:  # no httptools: h11, as uvicorn's "auto"
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

        class Protocol(_HeaderDeadline, base):
            def handle_events(self) -> None:
                super().handle_events()
                if self.conn.their_state is not h11.IDLE:
                    self._head_done()

    Protocol.timeout_s = timeout_s
    return Protocol


def connection_options(s) -> dict:
    """uvicorn ``Config`` keywords for ``Settings`` ``s``: the protocol above and the connection cap."""
    return {"http": with_header_deadline(s.header_timeout_s), "limit_concurrency": s.max_connections}
