"""What a running app holds: the resident store, Redis, the batcher, the
ledger and the stats; startup, shutdown and hot swap of store versions."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import redis.asyncio as aioredis
import torch
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from influence.errors import InfluenceError
from influence.store import current_version, open_store

from .auth import KeyRing
from .batcher import Batcher
from .embedded_redis import EmbeddedRedis
from .kinds import Kind, kind_of
from .ledger import OUTAGE, Journal, Ledger
from .settings import Settings
from .stats import Stats
from .tasks import cancel_and_wait

log = logging.getLogger("service")


class Runtime:
    """One per app. ``att`` is the current attributor (None until loaded) and
    ``kind`` the store kind serving it (``service.kinds``: chosen by the
    store's ``model.kind`` at load, both replaced together); replacing them
    is the whole hot swap: requests hold the pair they started with."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.att = None  # influence.attributor.Attributor or influence.text.attributor.TextAttributor
        self.kind: Kind | None = None
        self.audit: dict | None = None  # of the current att's store version (influence.store.Store.audit)
        self.batch_invariant: bool | None = None  # of the current att (see batcher.batch_invariant)
        self.load_error: str | None = "loading"
        self.stats = Stats()
        self.keys = KeyRing(settings)
        self.embedded: EmbeddedRedis | None = None
        self.redis: aioredis.Redis | None = None
        self.ledger: Ledger | None = None
        self.batcher: Batcher | None = None
        self.idem_local: OrderedDict[str, dict] = OrderedDict()  # idempotent answers, for Redis outages
        self.sources_cache: dict = {}
        self._tasks: list[asyncio.Task] = []
        self._reload_lock = asyncio.Lock()

    # ---- lifecycle -----------------------------------------------------
    async def start(self) -> None:
        s = self.s
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        if not s.auth_enabled:
            log.warning("no API keys configured (FA_QUERY_KEYS, FA_ADMIN_KEYS, ...): access is open")
        url = s.redis_url
        if not url:
            self.embedded = EmbeddedRedis(s.data_dir)
            url = await asyncio.to_thread(self.embedded.start)
        # a bounded pool that makes a burst wait for a connection instead of failing
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=s.redis_max_connections, timeout=s.request_timeout_s,
            socket_timeout=s.redis_timeout_s, socket_connect_timeout=s.redis_timeout_s, retry=Retry(NoBackoff(), 0))
        self.redis = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        journal = Journal(s.journal_dir, s.journal_max_entries, s.journal_fsync)
        self.ledger = Ledger(self.redis, s.redis_prefix, journal, s.record_marker_ttl_s, s.replay_interval_s,
                             s.idempotency_ttl_s)
        try:
            await self.redis.ping()
        except OUTAGE:
            self.ledger.healthy = False
            log.warning("redis at %s not reachable at startup: credit goes to the journal until it is",
                        url.rsplit("@", 1)[-1])
        self.ledger.start()
        self.batcher = Batcher(s.max_batch, s.max_wait_ms / 1000, s.queue_size, s.batching,
                               s.request_timeout_s, s.retry_after_s, self.stats.batch, s.adaptive_wait)
        self.batcher.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._initial_load(), name="initial-load"))
        if s.watch_store_s > 0:
            self._tasks.append(loop.create_task(self._watch(), name="store-watch"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self.batcher:
            await self.batcher.stop()
        if self.ledger:
            await self.ledger.stop()
        if self.redis:
            await self.redis.aclose()
        if self.embedded:
            await asyncio.to_thread(self.embedded.stop)

    # ---- store ---------------------------------------------------------
    async def reload(self, version: str | None = None) -> dict:
        """Load ``version`` (default: the store's CURRENT) and make it the
        one new requests use; a no-op when it already is."""
        async with self._reload_lock:
            prev = self.att.version if self.att else None
            target = version or await asyncio.to_thread(current_version, self.s.store)
            if target == prev:
                return {"previous_version": prev, "store_version": prev, "changed": False, "load_s": 0.0}
            t0 = time.perf_counter()
            store = await asyncio.to_thread(open_store, self.s.store, target)
            kind = kind_of(store.manifest)
            att = await asyncio.to_thread(kind.load, store, self.s.device)
            invariant = await asyncio.to_thread(kind.invariant, att, kind.block(self.s))
            if not invariant:
                log.warning("store %s: a query's scores depend on its position in a readout block on this host "
                            "(BLAS kernel choice): answers may differ in the last bits with concurrent traffic",
                            att.version)
            self.att, self.kind, self.load_error, self.batch_invariant, self.audit = att, kind, None, invariant, \
                store.audit
            self.stats.m_reloads.inc()
            self._tasks = [t for t in self._tasks if not t.done()]
            if prev and self.s.cache_ttl_s:
                self._tasks.append(asyncio.get_running_loop().create_task(self._drop_cache(prev)))
            dt = time.perf_counter() - t0
            log.info("serving %s store %s (was %s) on %s, loaded in %.2f s", kind.name, att.version, prev,
                     att.device, dt)
            return {"previous_version": prev, "store_version": att.version, "changed": True, "load_s": round(dt, 4)}

    async def _drop_cache(self, version: str) -> None:
        """Delete the cached answers of a version no longer served (they
        would expire anyway: the cache key holds the version)."""
        try:
            batch = []
            async for key in self.redis.scan_iter(match=self.ledger.key("cache", version, "*"), count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await self.redis.unlink(*batch)
                    batch = []
            if batch:
                await self.redis.unlink(*batch)
        except OUTAGE:
            pass

    async def _initial_load(self) -> None:
        while self.att is None:
            try:
                await self.reload()
            except (InfluenceError, OSError) as e:
                self.load_error = str(e)
                log.error("cannot load the store yet (retrying in 2 s): %s", e)
                await asyncio.sleep(2.0)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.s.watch_store_s)
            if self.att is None:
                continue
            try:
                if await asyncio.to_thread(current_version, self.s.store) != self.att.version:
                    await self.reload()
            except (InfluenceError, OSError) as e:
                log.error("store watch: reload failed, still serving %s: %s", self.att.version, e)

    # ---- idempotent answers --------------------------------------------
    def remember_local(self, key: str, value: dict) -> None:
        self.idem_local[key] = value
        self.idem_local.move_to_end(key)
        while len(self.idem_local) > 10_000:
            self.idem_local.popitem(last=False)
