"""Connections that never finish a request head are closed (issue 28 row 10):
silent connections and header dribblers, on a real uvicorn over loopback,
are closed by the server within ``header_timeout_s`` (they stayed open for
ever: uvicorn times out only idle kept-alive connections, and one byte
cancels that); a kept-alive connection still serves its next request; and
open connections per process are capped (``max_connections``: 503 beyond).
Time limits are generous (a busy machine): what is asserted is that the
server closes them, long before the test gives up."""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse

import httpx

from .util import serve


def _open(base: str) -> socket.socket:
    u = urllib.parse.urlparse(base)
    s = socket.create_connection((u.hostname, u.port), timeout=60)
    return s


def _closed_by_server(s: socket.socket, within_s: float, dribble: bool = False) -> float | None:
    """Seconds until the server closed ``s`` (recv gives b'' or a reset), dribbling a header byte
    every 0.2 s if asked; None if still open after ``within_s``."""
    t0 = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - t0 < within_s:
        try:
            if dribble:
                s.sendall(b"x")
            if s.recv(1024) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: closed
            return time.monotonic() - t0
    return None


def test_silent_and_dribbling_connections_are_closed(settings_for):
    with serve(settings_for(header_timeout_s=1.0)) as base:
        idle = [_open(base) for _ in range(8)]
        dribblers = [_open(base) for _ in range(8)]
        for s in dribblers:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        out: dict[int, float | None] = {}

        def watch(i, s, dribble):
            out[i] = _closed_by_server(s, 30.0, dribble)

        threads = [threading.Thread(target=watch, args=(i, s, i >= 8)) for i, s in enumerate(idle + dribblers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(v is not None for v in out.values()), out  # every one closed by the server
        # a kept-alive connection serves its next request, then is timed out like the others
        with httpx.Client(base_url=base) as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/healthz").status_code == 200
        for s in idle + dribblers:
            s.close()


def test_open_connections_per_process_are_capped(settings_for):
    with serve(settings_for(header_timeout_s=60.0, max_connections=3)) as base:
        held = [_open(base) for _ in range(3)]
        time.sleep(0.3)
        r = httpx.get(base + "/healthz", timeout=30)
        assert r.status_code == 503
        for s in held:
            s.close()
        deadline = time.monotonic() + 30
        while httpx.get(base + "/healthz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
