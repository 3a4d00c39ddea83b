"""Answers kept for reuse: the result cache and the idempotency store.

Redis keys (``P`` = ``redis_prefix``, see ``service.ledger``)::

    P cache:{version}:{hash}   one query's answer and credit, JSON, TTL cache_ttl_s;
                               hash: sha256 of the options that shape an answer
                               and the query's cache tag (``Form.prepare``)
    P idem:{principal}:{hash}  hash: sha256 of the Idempotency-Key; while the first
                               request with the key is being answered, its claim
                               ``P|{token}|{body sha256}`` (TTL: twice request_timeout_s,
                               at least 60 s), then the answer
                               ``{"fp": body sha256, "body": response}`` (TTL idempotency_ttl_s)

Idempotency: a request with a key first *claims* it, atomically, with its
body's fingerprint (one Lua call: read the key, set the claim if there is
none) -- before any work. Whoever holds the claim computes the answer and
replaces the claim by it (only if the claim is still its own); a request
that finds an answer replays it (``Idempotent-Replayed: true``); one that
finds a claim or an answer with another body's fingerprint is a 422 naming
``Idempotency-Key``; an identical twin that finds a claim waits for the
answer (in process: on the owner's future; another process: polling Redis)
and replays it, or answers 409 ``idempotency_in_progress`` if none comes
within ``request_timeout_s``. A failed owner withdraws its claim, and a
waiting twin claims the key itself.

Outages: while Redis cannot be reached the cache is skipped (a miss; nothing
is stored), and keys are claimed in process only. Every answer this process
gives to a key is also kept in process (``idempotency_local_entries``, LRU,
for ``idempotency_ttl_s``) and read first, so a retry to this process gets
the same answer with Redis up or down; answers given while Redis was
unreachable are written to Redis once it is back (so other processes see
them). A key whose answer has left the in-process store (only its
fingerprint is kept, for ten times as many keys) is a 503
``idempotency_unavailable`` while Redis is unreachable: never another
answer. Limits, per process: a key answered only by another process, or
before this process started, cannot be checked while Redis is unreachable
and is answered afresh; its credit is still counted once (the record id
comes from the key: ``service.ledger``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from .errors import ApiError, invalid, unavailable
from .ledger import OUTAGE, Ledger
from .schemas import AttributionRequest
from .settings import Settings

SEEN_FACTOR = 10  # keys whose fingerprint is kept after their answer left the in-process store, per entry

# KEYS[1]: the idem key. ARGV: claim value, its TTL. -> nil (claimed) or what the key holds.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
# ARGV: our claim ('' for an answer given during an outage), the answer, its TTL.
# Stores the answer if the key holds our claim or nothing; -> nil, or what it holds.
_FINISH = """
local v = redis.call('GET', KEYS[1])
if (not v) or (ARGV[1] ~= '' and v == ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return false
end
return v
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
        self.wait_s, self.retry_after_s = settings.request_timeout_s, settings.retry_after_s
        self.claim_ttl_s = max(60, int(2 * settings.request_timeout_s))
        self.local_entries = settings.idempotency_local_entries
        self.local: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key -> (expiry, answer JSON)
        self.seen: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key -> (expiry, fingerprint): evicted
        self.inflight: dict[str, tuple[str, asyncio.Future]] = {}  # key -> (fingerprint, done) of this process
        self.unsynced: dict[str, tuple[str, str]] = {}  # (our claim or "", answer JSON) to write to Redis
        ledger.recovery_hooks.append((self.unsynced_waiting, self.sync))
        self._claim_script = redis.register_script(_CLAIM)
        self._finish_script = redis.register_script(_FINISH)
        self._release_script = redis.register_script(_RELEASE)

    # ---- result cache --------------------------------------------------
    @property
    def caching(self) -> bool:
        """Whether the cache is in use right now."""
        return bool(self.cache_ttl_s) and self.ledger.healthy

    def cache_key(self, version: str, req: AttributionRequest, output: str, tag: tuple[str, bytes]) -> str:
        per = f"|per_token:{req.token_top_k}" if req.per_token else ""  # (absent when off: the keys of before)
        h = hashlib.sha256(f"{output}|{req.granularity}|{req.top_k}|{req.order}|{tag[0]}|{self._credit}{per}".encode())
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

    async def claim(self, key: str, fingerprint: str) -> Claim:
        """Claim ``key`` for a request whose body has ``fingerprint``; the
        claim holds the stored answer (``replay``) when there is one. 422
        for another body, 409 when a twin does not finish in time, 503 for a
        key whose answer is out of reach during an outage (module doc)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            value = self._local_answer(key)
            if value is not None:
                return Claim(key, self._same(value["fp"], fingerprint), replay=value["body"])
            twin = self.inflight.get(key)
            if twin is not None:  # a request of this process holds the key
                self._same(twin[0], fingerprint)
                try:
                    await asyncio.wait_for(asyncio.shield(twin[1]), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise self._in_progress() from None
                continue  # answered (now in the local store), or withdrawn: look again
            token = uuid.uuid4().hex
            pending = f"P|{token}|{fingerprint}"
            self.inflight[key] = (fingerprint, asyncio.get_running_loop().create_future())
            mine = Claim(key, fingerprint, pending=pending)
            if not self.ledger.healthy:
                return self._claim_offline(mine)
            try:
                found = await self._claim_script(keys=[key], args=[pending, self.claim_ttl_s])
            except OUTAGE:
                self.ledger.healthy = False  # the replay loop checks Redis and brings it back
                return self._claim_offline(mine)
            if found is None:
                return mine  # claimed in Redis: this request computes the answer
            self._withdraw_local(mine)
            found = found.decode() if isinstance(found, bytes) else found
            if not found.startswith("P|"):
                value = json.loads(found)
                self._remember(key, value)
                return Claim(key, self._same(value["fp"], fingerprint), replay=value["body"])
            self._same(found.rsplit("|", 1)[1], fingerprint)
            await self._await_other_process(key, deadline)

    async def finish(self, claim: Claim, body: dict) -> dict:
        """Store the answer of a claimed key; -> the answer to send (another
        process's, in the rare case its claim took over after ours expired)."""
        value = {"fp": claim.fingerprint, "body": body}
        raw = json.dumps(value, separators=(",", ":"))
        stored = False
        if claim.pending and self.ledger.healthy:
            try:
                other = await self._finish_script(keys=[claim.key], args=[claim.pending, raw, self.idem_ttl_s])
                stored = True
                if other is not None and not (other.decode() if isinstance(other, bytes) else other).startswith("P|"):
                    value = json.loads(other)
            except OUTAGE:
                self.ledger.healthy = False
        if not stored:
            self.unsynced[claim.key] = (claim.pending or "", raw)
        self._remember(claim.key, value)
        self._withdraw_local(claim)
        return value["body"]

    async def release(self, claim: Claim) -> None:
        """Withdraw a claim whose request failed: a twin or a retry may claim the key."""
        self._withdraw_local(claim)
        if claim.pending and self.ledger.healthy:
            try:
                await self._release_script(keys=[claim.key], args=[claim.pending])
            except OUTAGE:
                pass  # the claim expires

    def unsynced_waiting(self) -> bool:
        return bool(self.unsynced)

    async def sync(self) -> int:
        """Write the answers given while Redis was unreachable (a key another
        process answered meanwhile keeps that answer there); -> how many."""
        n = 0
        for key, (pending, raw) in list(self.unsynced.items()):
            await self._finish_script(keys=[key], args=[pending, raw, self.idem_ttl_s])
            self.unsynced.pop(key, None)
            n += 1
        return n

    # internals
    def _claim_offline(self, claim: Claim) -> Claim:
        """Redis unreachable: the in-process claim stands, unless this
        process answered the key before and no longer holds that answer."""
        fp = self.seen.get(claim.key)
        if fp is not None:
            self._withdraw_local(claim)
            self._same(fp[1], claim.fingerprint)
            raise unavailable("Idempotency-Key: answered before, and its stored answer cannot be read while Redis "
                              "is unreachable; retry later", self.retry_after_s, "idempotency_unavailable")
        return Claim(claim.key, claim.fingerprint, pending=None)

    async def _await_other_process(self, key: str, deadline: float) -> None:
        """Poll until another process's claim on ``key`` turns into an answer
        (kept locally) or goes away; 409 at ``deadline``."""
        delay = 0.005
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
            try:
                raw = await self.r.get(key)
            except OUTAGE:
                self.ledger.healthy = False
                return
            if raw is None:
                return
            raw = raw.decode() if isinstance(raw, bytes) else raw
            if not raw.startswith("P|"):
                self._remember(key, json.loads(raw))
                return
        raise self._in_progress()

    def _in_progress(self) -> ApiError:
        reason = "a request with this key and body is still being answered; retry it"
        return ApiError(409, "idempotency_in_progress", f"Idempotency-Key: {reason}", [("Idempotency-Key", reason)],
                        "header", {"Retry-After": str(self.retry_after_s)})

    @staticmethod
    def _same(stored_fp: str, fingerprint: str) -> str:
        if stored_fp != fingerprint:
            raise invalid("Idempotency-Key", "was used before with a different request body", "header")
        return fingerprint

    def _withdraw_local(self, claim: Claim) -> None:
        held = self.inflight.get(claim.key)
        if held is not None and claim.pending is not False:
            self.inflight.pop(claim.key, None)
            if not held[1].done():
                held[1].set_result(None)

    def _local_answer(self, key: str) -> dict | None:
        hit = self.local.get(key)
        if hit is None:
            return None
        expires, raw = hit
        if expires < time.monotonic():
            del self.local[key]
            return None
        self.local.move_to_end(key)
        return json.loads(raw)

    def _remember(self, key: str, value: dict) -> None:
        self.local[key] = (time.monotonic() + self.idem_ttl_s, json.dumps(value, separators=(",", ":")))
        self.local.move_to_end(key)
        self.seen.pop(key, None)
        while len(self.local) > self.local_entries:
            old, (expires, raw) = self.local.popitem(last=False)
            self.seen[old] = (expires, json.loads(raw)["fp"])
            self.unsynced.pop(old, None)
        while len(self.seen) > self.local_entries * SEEN_FACTOR:
            self.seen.popitem(last=False)


@dataclass(frozen=True)
class Claim:
    """A request's hold on an Idempotency-Key. ``replay``: the stored answer
    (nothing to compute); else this request computes it, holding the key in
    Redis (``pending``: its claim value) or, during an outage, in process
    only (``pending`` None)."""

    key: str
    fingerprint: str
    replay: dict | None = None
    pending: str | None | bool = False  # False: a replay, holds nothing
