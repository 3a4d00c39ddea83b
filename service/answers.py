"""Answers kept for reuse: the result cache and the idempotency store.

Redis keys (``P`` = ``redis_prefix``, see ``service.ledger``)::

    P cache:{version}:{hash}   one query's answer and credit, JSON, TTL cache_ttl_s;
                               hash: sha256 of the options that shape an answer
                               and the query's cache tag (``Kind.prepare``)
    P idem:{principal}:{hash}  {"fp": body sha256, "body": response}, TTL
                               idempotency_ttl_s; hash: sha256 of the Idempotency-Key

Outages: while the ledger says Redis is unhealthy, or a call fails, the
cache is simply skipped (a miss; nothing is stored), and idempotent answers
live on in a local LRU of ``LOCAL_ANSWERS`` entries, so a retry during an
outage still gets its first answer. The local copy is written on every
store and read first, whether Redis is up or not.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable

import redis.asyncio as aioredis

from .errors import invalid
from .ledger import OUTAGE, Ledger
from .schemas import AttributionRequest
from .settings import Settings

LOCAL_ANSWERS = 10_000  # idempotent answers kept in process for Redis outages


class AnswerStore:
    """The result cache and the idempotency store over one Redis client.
    ``serving()``: the store version being served now, so that answers of
    a version swapped out meanwhile are not cached (its keys are being
    dropped)."""

    def __init__(self, redis: aioredis.Redis, ledger: Ledger, settings: Settings,
                 serving: Callable[[], str | None]):
        self.r, self.ledger, self.serving = redis, ledger, serving
        self.cache_ttl_s, self.idem_ttl_s = settings.cache_ttl_s, settings.idempotency_ttl_s
        # Part of every cache key: settings that change the credit of an answer.
        self._credit = f"{settings.credit_rule}|{settings.credit_units}|"
        self.local: OrderedDict[str, dict] = OrderedDict()

    # ---- result cache --------------------------------------------------
    @property
    def caching(self) -> bool:
        """Whether the cache is in use right now."""
        return bool(self.cache_ttl_s) and self.ledger.healthy

    def cache_key(self, version: str, req: AttributionRequest, output: str, tag: tuple[str, bytes]) -> str:
        h = hashlib.sha256(f"{output}|{req.granularity}|{req.top_k}|{req.order}|{tag[0]}|{self._credit}".encode())
        h.update(tag[1])
        return self.ledger.key("cache", version, h.hexdigest())

    async def get_many(self, keys: list[str]) -> list[dict | None]:
        """Per key its cached answer, or None (a miss, or Redis out)."""
        if not self.caching:
            return [None] * len(keys)
        try:
            raw = await self.r.mget(keys)
        except OUTAGE:
            return [None] * len(keys)
        return [json.loads(v) if v else None for v in raw]

    async def put_many(self, version: str, items: dict[str, dict]) -> None:
        """Cache ``items`` (key -> answer) of ``version``, unless it is no
        longer the served one."""
        if not items or not self.caching or version != self.serving():
            return
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for k, v in items.items():
                    pipe.set(k, json.dumps(v, separators=(",", ":")), ex=self.cache_ttl_s)
                await pipe.execute()
        except OUTAGE:
            pass

    async def drop_version(self, version: str) -> None:
        """Delete the cached answers of a version no longer served (they
        would expire anyway: the cache key holds the version)."""
        try:
            batch = []
            async for key in self.r.scan_iter(match=self.ledger.key("cache", version, "*"), count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await self.r.unlink(*batch)
                    batch = []
            if batch:
                await self.r.unlink(*batch)
        except OUTAGE:
            pass

    # ---- idempotency ---------------------------------------------------
    @staticmethod
    def idem_hash(idempotency_key: str) -> str:
        return hashlib.sha256(idempotency_key.encode()).hexdigest()

    def idem_key(self, principal_id: str, idem_hash: str) -> str:
        """Scoped by principal: two keys' holders never share an answer."""
        return self.ledger.key("idem", principal_id, idem_hash)

    async def idempotent_lookup(self, key: str, fingerprint: str) -> dict | None:
        """The stored answer for a retried key (422 if its body differs)."""
        found = self.local.get(key)
        if found is None and self.ledger.healthy:
            try:
                raw = await self.r.get(key)
                found = json.loads(raw) if raw else None
            except OUTAGE:
                found = None
        if found is not None and found["fp"] != fingerprint:
            raise invalid("Idempotency-Key", "was used before with a different request body", "header")
        return found["body"] if found else None

    async def idempotent_store(self, key: str, fingerprint: str, body: dict) -> dict:
        """Keep the answer; if a concurrent twin stored one first, return that."""
        value = {"fp": fingerprint, "body": body}
        if self.ledger.healthy:
            try:
                if not await self.r.set(key, json.dumps(value), nx=True, ex=self.idem_ttl_s):
                    raw = await self.r.get(key)
                    if raw:
                        value = json.loads(raw)
            except OUTAGE:
                pass
        self._remember(key, value)
        return value["body"]

    def _remember(self, key: str, value: dict) -> None:
        self.local[key] = value
        self.local.move_to_end(key)
        while len(self.local) > LOCAL_ANSWERS:
            self.local.popitem(last=False)
