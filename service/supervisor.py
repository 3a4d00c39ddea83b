"""Several serving processes behind one port (``--workers N``): a small
supervisor of our own.

Why not uvicorn's ``--workers`` (or gunicorn's): they bind one listening
socket in the supervisor and let every process accept on it. Keep-alive
clients then do not spread: Linux hands a new connection to whichever
process happens to be waiting in ``accept``, and on this host 32 concurrent
connections landed 27/5, 31/1 and 32/0 on two processes (``BENCHMARKS.md``,
Serving speed: several processes), so one process did nearly all the work.
Here each process binds its **own** listening socket to the port with
``SO_REUSEPORT`` and the kernel spreads new connections over them by a hash
of the connection (16/16-ish). The supervisor

- starts the embedded Redis once when no URL is given (``__main__``), so all
  processes share it, and hands every process the same settings (JSON);
- reserves the port (a bound, non-listening ``SO_REUSEPORT`` socket: with
  ``--port 0`` the port is chosen once for all processes);
- starts ``workers`` spawned processes (``multiprocessing`` spawn: no fork of
  a process that has loaded torch), each running uvicorn on its socket and
  the app's lifespan (its batcher, its copy of the store, its journal slot);
- lets a process join the listening group only once its store is resident
  while another process of the group is ready (``JoinWhenResident``): the
  kernel spreads new connections over the *listening* sockets of the port,
  so one that is bound but not yet listening gets none, and a restarted
  process loading its store (seconds to minutes) answers no one ``503
  not_ready`` while its peer could have answered. With no process ready (the
  group starting, or every other one gone) it listens at once, as a lone
  process does: ``/healthz`` answers and ``/readyz`` says ``not_ready``;
- starts a process again when one dies (its journal slot is then free: the
  new process claims it and replays what it holds, ``service.ledger``); stops
  the group with exit status 3 when a process fails at startup (a store that
  does not load, a bad setting) instead of restarting it forever;
- on SIGTERM or SIGINT asks every process to stop (uvicorn's graceful
  shutdown: in-flight requests finish, the ledger's last commit is made) and
  waits for them. A process whose supervisor is gone gets SIGTERM (Linux
  ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import socket
import time

import uvicorn

log = logging.getLogger("service")

STARTUP_FAILURE = 3  # uvicorn's exit status when the lifespan fails
RESTART_PAUSE_S = 1.0


def reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


JOIN_POLL_S = 0.2  # how often a process waiting to listen looks at its store and its peers, seconds


class JoinWhenResident(uvicorn.Server):
    """uvicorn listens on its sockets right after the app's lifespan has
    started (``Server.startup``); here, when another process of the group is
    ready, that start also waits until this process's store is resident
    (module doc). The wait ends early on SIGTERM / SIGINT (uvicorn's
    ``should_exit``), and when no other process is ready any more."""

    def __init__(self, config: uvicorn.Config, app_of):
        super().__init__(config)
        self.app_of = app_of  # -> the app once uvicorn has made it (config.load), for its runtime

    async def startup(self, sockets=None):
        started = self.lifespan.startup

        async def then_wait() -> None:
            await started()
            if not self.lifespan.should_exit:
                await self.until_resident()

        self.lifespan.startup = then_wait
        await super().startup(sockets)

    async def until_resident(self) -> None:
        rt = getattr(self.app_of().state, "rt", None)
        if rt is None or rt.peers is None:
            return
        waited, t0 = None, time.monotonic()
        while not self.should_exit and rt.served is None:
            peer = await asyncio.to_thread(rt.peers.ready_peer)
            if peer is None:
                if waited is not None:
                    log.warning("no other serving process is ready any more: listening while the store loads")
                return
            if waited is None:
                log.info("serving process %d waits for its store before it listens (process %d is ready)",
                         rt.peers.slot, peer)
                waited = peer
            await asyncio.sleep(JOIN_POLL_S)
        if waited is not None and rt.served is not None:
            log.info("store resident after %.1f s: serving process %d listens", time.monotonic() - t0,
                     rt.peers.slot)


def _child(settings_json: str, host: str, port: int, log_level: str) -> None:
    """One serving process (spawned): its own SO_REUSEPORT socket (bound; listening once
    ``JoinWhenResident`` lets it), uvicorn, ``service.app.worker_app``."""
    _die_with_parent()
    from .app import WORKER_LOG_LEVEL, WORKER_SETTINGS, worker_app
    from .protocol import connection_options
    from .settings import Settings

    os.environ[WORKER_SETTINGS], os.environ[WORKER_LOG_LEVEL] = settings_json, log_level.upper()
    sock = reuseport_socket(host, port)
    made = []

    def factory():
        made.append(worker_app())
        return made[0]

    config = uvicorn.Config(factory, factory=True, host=host, port=port, log_level=log_level,
                            access_log=log_level == "debug",
                            **connection_options(Settings.model_validate_json(settings_json)))
    JoinWhenResident(config, lambda: made[0]).run(sockets=[sock])


def supervise(settings_json: str, host: str, port: int, workers: int, log_level: str = "info") -> int:
    """Run ``workers`` serving processes until SIGTERM / SIGINT; -> exit status."""
    reserve = reuseport_socket(host, port)
    port = reserve.getsockname()[1]
    ctx = mp.get_context("spawn")
    stopping: list[int] = []

    def on_signal(sig, _frame):
        stopping.append(sig)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def start(i: int):
        p = ctx.Process(target=_child, args=(settings_json, host, port, log_level), name=f"fa-serve-{i}")
        p.start()
        return p

    procs = [start(i) for i in range(workers)]
    scheme_host = f"[{host}]" if ":" in host else host
    log.info("Uvicorn running on http://%s:%d with %d serving processes (SO_REUSEPORT; supervisor pid %d)",
             scheme_host, port, workers, os.getpid())
    status = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for i, p in enumerate(procs):
                if p.is_alive() or stopping:
                    continue
                if p.exitcode == STARTUP_FAILURE:
                    log.error("serving process %d (pid %s) failed at startup: stopping the group", i, p.pid)
                    stopping.append(signal.SIGTERM)
                    status = STARTUP_FAILURE
                    break
                log.warning("serving process %d (pid %s) exited with %s: starting it again", i, p.pid, p.exitcode)
                time.sleep(RESTART_PAUSE_S)
                procs[i] = start(i)
    finally:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)  # (a SIGINT from a terminal reached them already: the same)
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
                p.join()
        reserve.close()
        for s, h in old.items():
            signal.signal(s, h)
    return status
