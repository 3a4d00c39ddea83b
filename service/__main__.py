"""``python -m service`` / ``fa-service``: settings + flags, then uvicorn.

Flags override the environment (``FA_*``, ``.env``). With no Redis URL an
embedded Redis-compatible server is started in ``--data-dir``. The service
never trains: with no published store version it exits (status 2) with the
command that builds one (``fa-worker build --if-missing``, which
``scripts/run`` calls).

``--workers N`` (``FA_WORKERS``) runs N serving processes behind the one
port under the service's own supervisor (``service.supervisor``: one
``SO_REUSEPORT`` socket per process, so that the kernel spreads connections
evenly; restarts a process that dies). This process first starts the
embedded Redis when no URL is given, so that all processes share one; each
process then runs the lifespan of ``service.app`` on its own: its batcher,
its copy of the store, its own slot of the credit journal
(``service.ledger``), following the others' admin reloads
(``service.peers``). ``torch_threads`` 0 becomes the CPU count divided
among the processes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import uvicorn

from .protocol import connection_options
from .settings import Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="fa-service", description="Serve forward-only data attribution over HTTP.")
    ap.add_argument("--host", help="interface to bind (FA_HOST)")
    ap.add_argument("--port", type=int, help="TCP port (FA_PORT)")
    ap.add_argument("--store", type=Path, help="influence store root (FA_STORE)")
    ap.add_argument("--data-dir", type=Path, help="service data dir: embedded Redis, journal (FA_DATA_DIR)")
    ap.add_argument("--redis-url", help="Redis URL (FA_REDIS_URL / REDIS_URL); unset = embedded server")
    ap.add_argument("--device", help="torch device for the store, e.g. cuda or cpu (FA_DEVICE)")
    ap.add_argument("--workers", type=int, help="serving processes behind the port (FA_WORKERS; default 1)")
    ap.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)  # old flag; the service never builds
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return ap.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    over = {k: v for k, v in {"host": args.host, "port": args.port, "store": args.store, "data_dir": args.data_dir,
                              "redis_url": args.redis_url, "device": args.device,
                              "workers": args.workers}.items() if v is not None}
    base = Settings()
    return Settings(**{**base.model_dump(), **over})


def missing_store(settings: Settings) -> str | None:
    """Why the service cannot start on ``settings.store``, or None."""
    if (settings.store / "CURRENT").is_file():
        return None  # whether it opens is the lifespan's check (it names the file and problem)
    return (f"no published store at {settings.store} (no CURRENT file). The service never trains; build one first:\n"
            f"  fa-worker build --preset digits --store {settings.store} --if-missing\n"
            "(scripts/run does this), or point FA_STORE / --store at an existing store.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from(args)
    except ValueError as e:
        print(f"fa-service: invalid settings: {e}", file=sys.stderr)
        return 2
    if (why := missing_store(settings)) is not None:
        print(f"fa-service: {why}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        return serve_workers(settings, args.log_level)
    from .app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                access_log=args.log_level == "debug", **connection_options(settings))
    return 0


def serve_workers(settings: Settings, log_level: str = "info") -> int:
    """``settings.workers`` processes behind one port (module doc); returns
    the exit status when they have all stopped."""
    from . import peers
    from .embedded_redis import EmbeddedRedis
    from .supervisor import supervise

    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir)
        settings = settings.model_copy(update={"redis_url": embedded.start()})
    if settings.torch_threads == 0:
        settings = settings.model_copy(update={"torch_threads": max(1, (os.cpu_count() or 1) // settings.workers)})
    peers.clear(settings.data_dir / "peers")
    log = logging.getLogger("service")
    log.info("%d serving processes, Redis %s", settings.workers, "embedded" if embedded else "at the given URL")
    try:
        return supervise(settings.model_dump_json(), settings.host, settings.port, settings.workers, log_level)
    finally:
        if embedded:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
