"""What a running app holds and how it starts, stops and hot swaps.

``Runtime.open(settings)`` (called in the app's lifespan) connects to (or
starts) Redis and starts the ledger and the batcher; the runtime it returns
is complete. The one thing that appears later is the store being served: a
background task loads it, and ``reload`` replaces it, as one immutable
:class:`Served` in one assignment. ``stop()`` ends it all in order.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import torch
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from influence import registry
from influence.attributor import Attributor
from influence.errors import InfluenceError, StoreError
from influence.store import Manifest, current_version, list_versions, open_store, read_manifest

from .answers import AnswerStore
from .batcher import Batcher
from .embedded_redis import EmbeddedRedis
from .errors import ApiError, invalid
from .forms import Form, form_of
from .ledger import OUTAGE, Journal, Ledger
from .peers import FOLLOW_S, Peers, VersionPin
from .settings import Settings
from .stats import Stats
from .tasks import cancel_and_wait

log = logging.getLogger("service")


VERSION_NAME = re.compile(r"v[0-9]{6,12}")
"""A published version's name (``influence.store`` names them ``v000001``,
``v000002``, ...): ``v`` and 6 to 12 ASCII digits, never a path."""


def check_version_name(name: str, field: str = "version") -> None:
    """422 naming ``field`` unless ``name`` is a version name (no path, no
    separator, no other characters)."""
    if not VERSION_NAME.fullmatch(name):
        raise invalid(field, "must be a published version name such as v000002 (v and 6 to 12 digits), "
                      "not a path", "query")


def change_refused(old: Manifest, old_kind: str, new: Manifest, allow_kind_change: bool,
                   allow_source_change: bool) -> None:
    """409 naming ``version`` when ``new`` serves another model kind or
    another set of sources than ``old``, unless the matching flag allows it."""
    form = form_of(new)
    new_kind = form.name
    if new_kind != old_kind and not allow_kind_change:
        same_form = form.text and registry.get(old_kind).text
        reason = (f"{new.version} holds a {new_kind} store, {old.version} (served) a {old_kind} store: the "
                  + ("model and its tokenizer change" if same_form else "query form changes")
                  + "; add allow_kind_change=true to switch anyway")
        raise ApiError(409, "conflict", f"version: {reason}", [("version", reason)], "query")
    gone, added = set(old.source_ids) - set(new.source_ids), set(new.source_ids) - set(old.source_ids)
    if (gone or added) and not allow_source_change:
        reason = (f"{new.version} has another source set than {old.version} (served): {len(gone)} of its "
                  f"sources missing, {len(added)} new; add allow_source_change=true to switch anyway (credit "
                  "recorded so far stays under the old ids: reports keep it, /v1/sources marks them "
                  "in_store false)")
        raise ApiError(409, "conflict", f"version: {reason}", [("version", reason)], "query")


@dataclass(frozen=True)
class Served:
    """One store version as served: its attributor, the kind that reads and
    answers its queries (``service.forms``), its audit
    (``influence.store.Store.audit``) and whether a query's scores are
    independent of its batch on this host (``Form.invariant``). A request
    takes the object current when it starts and keeps it to the end."""

    att: Attributor
    form: Form
    audit: dict | None
    probe: InvarianceProbe
    pin: VersionPin | None = None  # its directory's shared flock: fa-worker's pruning spares it (service.peers)

    @property
    def version(self) -> str:
        return self.att.version

    @property
    def batch_invariant(self) -> bool | None:
        """True / False once the probe has run, None while it runs (it does not gate serving)."""
        return self.probe.result


class InvarianceProbe:
    """``Form.invariant`` on a loaded store, in a background thread: on a CPU it
    reads every row a few times (168 s of the brown-ft store's 175 s start
    before), and it only reports, it gates nothing, so a process serves as soon
    as the store is resident and /readyz says ``batch_invariant: null`` until
    the answer is in. The probe's readouts run beside the first queries."""

    def __init__(self, form: Form, att, block: int):
        self.result: bool | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(form, att, block), daemon=True,
                                        name=f"invariance-probe-{att.version}")
        self._thread.start()

    def _run(self, form: Form, att, block: int) -> None:
        try:
            got = form.invariant(att, block, self._stop.is_set)
        except Exception:  # noqa: BLE001 - a failed probe is reported as not invariant, never a crash
            log.exception("store %s: the batch-invariance probe failed", att.version)
            got = False
        if got is None:  # stopped: the process is shutting down, nothing to report
            return
        self.result = bool(got)
        if not self.result:
            log.warning("store %s: a query's scores depend on its position in a readout block on this host "
                        "(BLAS kernel choice): answers may differ in the last bits with concurrent traffic",
                        att.version)

    def wait(self, timeout: float | None = None) -> bool | None:
        self._thread.join(timeout)
        return self.result

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the probe to end after its current readout and wait for it (a thread still in
        torch when the interpreter exits aborts the process)."""
        self._stop.set()
        self._thread.join(timeout)


async def _connect(s: Settings) -> tuple[aioredis.Redis, EmbeddedRedis | None, str]:
    """(client, the embedded server when no URL is set, URL)."""
    embedded, url = None, s.redis_url
    if not url:
        embedded = EmbeddedRedis(s.data_dir)
        url = await asyncio.to_thread(embedded.start)
    # a bounded pool that makes a burst wait for a connection instead of failing
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=s.redis_max_connections, timeout=s.request_timeout_s,
        socket_timeout=s.redis_timeout_s, socket_connect_timeout=s.redis_timeout_s, retry=Retry(NoBackoff(), 0))
    return aioredis.Redis.from_pool(pool), embedded, url  # the client owns the pool: aclose() closes it


class Runtime:
    """One per app; see the module doc. ``served`` is None until the first
    store version is loaded."""

    def __init__(self, settings: Settings, stats: Stats, redis: aioredis.Redis, ledger: Ledger, batcher: Batcher,
                 embedded: EmbeddedRedis | None = None):
        self.s, self.stats = settings, stats
        self.redis, self.ledger, self.batcher, self.embedded = redis, ledger, batcher, embedded
        self.answers = AnswerStore(redis, ledger, settings, self.serving)
        self.served: Served | None = None
        self.peers: Peers | None = None  # the other serving processes of this host (workers > 1)
        self.sources_cache: dict = {}  # (rev, version, bucket) -> view (service.sources)
        self._tasks: list[asyncio.Task] = []
        self._probes: list[InvarianceProbe] = []  # the store probes still running (stopped at shutdown)
        self._reload_lock = asyncio.Lock()

    # ---- lifecycle -----------------------------------------------------
    @classmethod
    async def open(cls, s: Settings) -> Runtime:
        """Connect, start the ledger and the batcher, and begin loading the
        store in the background; the runtime returned is complete."""
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        if not s.auth_enabled:
            log.warning("no API keys configured (FA_QUERY_KEYS, FA_ADMIN_KEYS, ...): access is open")
        redis, embedded, url = await _connect(s)
        try:
            journal = Journal.claim(s.journal_dir, s.journal_max_entries, s.journal_fsync)
        except BaseException:  # nothing else started yet: leave no server or pool behind
            await redis.aclose()
            if embedded:
                await asyncio.to_thread(embedded.stop)
            raise
        ledger = Ledger(redis, s.redis_prefix, journal, s.record_marker_ttl_s, s.replay_interval_s,
                        s.idempotency_ttl_s)
        try:
            await redis.ping()
        except OUTAGE:
            ledger.healthy = False
            log.warning("redis at %s not reachable at startup: credit goes to the journal until it is",
                        url.rsplit("@", 1)[-1])
        stats = Stats()
        batcher = Batcher(s.max_batch, s.max_wait_ms / 1000, s.queue_size, s.batching, s.request_timeout_s,
                          s.retry_after_s, stats.batch, s.adaptive_wait, s.readout_workers)
        ledger.start()
        batcher.start()
        rt = cls(s, stats, redis, ledger, batcher, embedded)
        if s.workers > 1:
            rt.peers = Peers(s.data_dir / "peers", journal.slot, s.journal_dir)
            rt._spawn(rt._follow(), "follow-peers")
        rt._spawn(rt._initial_load(), "initial-load")
        if s.watch_store_s > 0:
            rt._spawn(rt._watch(), "store-watch")
        return rt

    async def stop(self) -> None:
        """Background tasks first, then the batcher (its requests finish),
        the ledger (its last group commit), Redis, the embedded server."""
        await cancel_and_wait(self._tasks)
        if self.served and self.served.pin:
            self.served.pin.release()
        probes = [p for p in self._probes if p.alive]
        await asyncio.gather(*(asyncio.to_thread(p.stop, 120) for p in probes))
        await self.batcher.stop()
        await self.ledger.stop()
        self.ledger.journal.release()
        await self.redis.aclose()
        if self.embedded:
            await asyncio.to_thread(self.embedded.stop)

    def _spawn(self, coro, name: str) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    def serving(self) -> str | None:
        """The store version new requests get, or None while none is loaded."""
        served = self.served
        return served.version if served else None

    # ---- store ---------------------------------------------------------
    async def reload(self, version: str | None = None, allow_kind_change: bool = False,
                     allow_source_change: bool = False) -> dict:
        """Load ``version`` (default: the store's CURRENT) and make it the
        one new requests use; a no-op when it already is.

        ``version`` is a name published under the store root (422 naming it
        otherwise, 404 when the root has no such version): never a path. A
        version of another model kind, or with another set of sources, than
        the one served is refused (409) unless ``allow_kind_change`` /
        ``allow_source_change``; credit already recorded stays in the
        aggregates under its source ids either way."""
        async with self._reload_lock:
            return await self._swap(version, allow_kind_change, allow_source_change)

    async def _swap(self, version: str | None, allow_kind_change: bool, allow_source_change: bool) -> dict:
        """``reload``'s work; the caller holds ``_reload_lock``."""
        old = self.served
        prev = old.version if old else None
        if version is not None:
            check_version_name(version)
            if version not in await asyncio.to_thread(list_versions, self.s.store):
                raise invalid("version", "no such store version", "query", 404)
        target = version or await asyncio.to_thread(current_version, self.s.store)
        if not VERSION_NAME.fullmatch(target):
            raise StoreError(f"{self.s.store}/CURRENT names {target[:80]!r}, not a version name")
        if target == prev:
            if self.peers:
                self.peers.announce(prev)
            return {"previous_version": prev, "store_version": prev, "changed": False, "load_s": 0.0}
        t0 = time.perf_counter()
        try:
            if old is not None:
                man = await asyncio.to_thread(read_manifest, self.s.store / "versions" / target)
                change_refused(old.att.manifest, old.form.name, man, allow_kind_change, allow_source_change)
            served = await asyncio.to_thread(self._load, target)
        except (InfluenceError, OSError) as e:
            if old is None:  # nothing served yet: the start-up loop retries and logs
                raise
            reason = f"cannot be loaded ({str(e)[:300]}); still serving {prev}"
            raise ApiError(409, "version_unloadable", f"version {target}: {reason}", [("version", reason)],
                           "query") from None
        self.served = served  # the whole hot swap
        if old is not None:
            old.probe.stop(0)  # a version no longer served needs no answer (ends after its current readout)
            if old.pin:
                old.pin.release()
        if self.peers:
            self.peers.announce(served.version)
        self.stats.m_reloads.inc()
        if prev and self.s.cache_ttl_s:
            self._spawn(self.answers.drop_version(prev), f"drop-cache-{prev}")
        dt = time.perf_counter() - t0
        log.info("serving %s store %s (was %s) on %s, loaded in %.2f s", served.form.name, served.version, prev,
                 served.att.device, dt)
        return {"previous_version": prev, "store_version": served.version, "changed": True, "load_s": round(dt, 4)}

    async def reload_all(self, version: str | None = None, allow_kind_change: bool = False,
                         allow_source_change: bool = False) -> dict:
        """``reload`` here, then, with other serving processes on this host
        (``service.peers``), in every one of them: the answer comes when all
        live processes serve the version (``processes``: how many do, of how
        many), or after ``request_timeout_s``. Reloads take turns across the
        group (``Peers.turn``), so the count still holds when it is sent."""
        if self.peers is None:
            return await self.reload(version, allow_kind_change, allow_source_change)
        async with self.peers.turn(self.s.request_timeout_s):
            async with self._reload_lock:  # (with the publish: this process's follower never takes it as news)
                out = await self._swap(version, allow_kind_change, allow_source_change)
                self.peers.publish(out["store_version"], allow_kind_change, allow_source_change)
            done, total = await self._wait_peers(out["store_version"])
        return {**out, "processes": {"serving": done, "total": total}}

    async def _wait_peers(self, target: str) -> tuple[int, int]:
        """(processes serving ``target``, live processes) once all do, or after ``request_timeout_s``."""
        deadline = time.monotonic() + self.s.request_timeout_s
        while True:
            seen = await asyncio.to_thread(self.peers.serving)
            done = sum(v == target for v in seen.values())
            if done == len(seen) or time.monotonic() > deadline:
                break
            await asyncio.sleep(FOLLOW_S / 2)
        if done < len(seen):
            log.warning("reload to %s: %d of %d serving processes serve it after %.0f s", target, done, len(seen),
                        self.s.request_timeout_s)
        return done, len(seen)

    async def _follow(self) -> None:
        """Load what another process's admin reload asked of all (``service.peers``)."""
        while True:
            await asyncio.sleep(FOLLOW_S)
            if self.served is None:
                continue
            async with self._reload_lock:  # desired.json read under the lock: never an older ask after a newer
                want = await asyncio.to_thread(self.peers.desired)
                if not want or want.get("seq") == self.peers.seen:
                    continue
                self.peers.seen = want["seq"]
                try:
                    await self._swap(want["version"], bool(want.get("allow_kind_change")),
                                     bool(want.get("allow_source_change")))
                except (InfluenceError, OSError, ApiError) as e:
                    log.error("reload asked by another serving process failed, still serving %s: %s",
                              self.serving(), getattr(e, "message", e))

    def _load(self, version: str) -> Served:
        """(in a thread) Pin, open, load and probe one store version."""
        pin = VersionPin(self.s.store / "versions" / version)
        try:
            store = open_store(self.s.store, version, packed=self.s.packed_rows)
            form = form_of(store.manifest)
            att = form.load(store, self.s)
        except BaseException:
            pin.release()
            raise
        probe = InvarianceProbe(form, att, form.block(self.s))
        self._probes = [p for p in self._probes if p.alive] + [probe]
        return Served(att, form, store.audit, probe, pin)

    async def _initial_load(self) -> None:
        """Load the group's version (``desired.json``: the last decision; with
        none yet, CURRENT, then put on record: ``Peers.record_start``), or
        CURRENT for a lone process. A group's version that cannot be loaded
        (gone from the store, damaged) is retried every 2 s, never replaced
        by CURRENT: this process stays not ready, and the next admin reload
        sent to any other process moves the whole group, this one included."""
        said, said_at = None, 0.0
        while self.served is None:
            want = await asyncio.to_thread(self.peers.desired) if self.peers else None
            try:
                if want:
                    self.peers.seen = want["seq"]
                    await self.reload(want["version"])
                else:
                    await self.reload()
                    if self.peers:
                        await self.peers.record_start(self.served.version)
            except (InfluenceError, OSError, ApiError) as e:
                why = getattr(e, "message", None) or str(e)
                if want:
                    missing = want["version"] not in await asyncio.to_thread(list_versions, self.s.store)
                    why = (f"the group's store version {want['version']} (desired.json, the group's last decision) "
                           + (f"is not in the store {self.s.store} (pruned or deleted)" if missing
                              else f"cannot be loaded: {why}")
                           + ": this process stays not ready rather than serve CURRENT beside the others; "
                           "POST /v1/admin/reload to a serving process moves the whole group, this one included")
                if why != said or time.monotonic() - said_at > 60:
                    log.error("cannot load the store yet (retrying every 2 s): %s", why)
                    said, said_at = why, time.monotonic()
                await asyncio.sleep(2.0)

    async def _watch(self) -> None:
        """Follow CURRENT; a version of another kind or source set is not
        switched to (logged once per version: POST /v1/admin/reload with the
        allow_* flag does it)."""
        refused = None
        while True:
            await asyncio.sleep(self.s.watch_store_s)
            version = self.serving()
            if version is None:
                continue
            try:
                cur = await asyncio.to_thread(current_version, self.s.store)
                if cur != version and cur != refused:
                    await self.reload_all()  # (in a group: on record as the group's version, peers.py)
            except (InfluenceError, OSError) as e:
                log.error("store watch: reload failed, still serving %s: %s", version, e)
            except ApiError as e:
                if e.status != 503:  # (503: another reload's turn; tried again next time)
                    refused = cur
                log.error("store watch: not switching to %s, still serving %s: %s", cur, version, e.message)
