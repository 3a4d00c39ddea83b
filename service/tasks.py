"""Stopping background tasks reliably.

On Python 3.11, ``asyncio.wait_for`` (used inside the redis client) can
swallow a cancellation that arrives just as its inner operation finishes
(fixed in 3.12). So every background loop here also checks a stop flag, and
stopping waits a bounded time instead of forever."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("service")


async def cancel_and_wait(tasks: list[asyncio.Task], timeout_s: float = 5.0) -> None:
    """Cancel ``tasks`` (again each 0.1 s, in case one was swallowed) and
    wait up to ``timeout_s`` for them to end."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending and loop.time() < deadline:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for t in pending:
        log.warning("background task %s did not stop within %.0f s", t.get_name(), timeout_s)
