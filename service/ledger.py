"""Per-source credit aggregates in Redis, exactly once, with an outage journal.

A *record* is what one served request adds: ``{"id", "bucket", "queries",
"credit": {source: units}, "hits": {source: queries credited}}``, with a
unique id (derived from the ``Idempotency-Key`` when there is one, else a
uuid). ``bucket`` is the UTC start (epoch seconds) of the ``bucket_s`` wide
time bucket the request was served in, fixed when it is served.

Redis keys (``P`` = ``redis_prefix``)::

    P credit:{bucket}  hash source -> credit units in that bucket
    P hits:{bucket}    hash source -> queries that credited the source
    P credit:all, P hits:all   the same, all time
    P queries          hash {bucket} -> recorded queries; field "all"
    P buckets          sorted set of buckets that hold data
    P rev              incremented on every applied record (ETags)
    P applied:{id}     marker: the record was applied (TTL record_marker_ttl_s,
                       idempotency_ttl_s for records of an Idempotency-Key)

A Lua script sets the marker with ``SET NX`` and does all increments in the
same atomic step: applying a record twice counts it once. When Redis cannot
be reached, records are appended (and fsynced) to ``journal/active.jsonl``
in the data dir (``service.journal``: an append the disk refuses, e.g. when
it is full, leaves the file as it was and the request answers 503); a
background task replays them once Redis answers again.
Because of the marker, a replay interrupted half way and run again still
counts each record exactly once. The journal holds at most
``journal_max_entries`` records: beyond that a recording request gets 503.

Several serving processes on one host (``workers``) share the data dir:
each claims its own journal *slot* (``Journal.claim``: slot 0 is
``journal/`` itself, slot k ``journal/p{k}``), held by an ``flock`` on the
slot's ``.lock`` for the life of the process, so no two live processes ever
append to or replay the same files. The lock goes with the process however
it ends; a slot left with records (a process killed during an outage, or a
restart with fewer processes) is *adopted*: any live process whose Redis
answers takes the free slot's lock and replays it (``Ledger.adopt``), and a
process starting later may claim it and replay it as its own.

Group commit: concurrent ``record`` calls share one script call (records
that arrive while one is in flight ride the next), one Redis round trip for
a whole micro-batch of requests instead of one each. A failed call sends
each of its records to the journal; the markers make that safe even when
the call had in fact been applied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .journal import Journal, JournalError, slot_dirs, slot_live, try_lock
from .tasks import cancel_and_wait

log = logging.getLogger("service.ledger")

# KEYS: rev, queries, buckets, credit:all, hits:all, then per record
#   applied:{id}, credit:{bucket}, hits:{bucket}.
# ARGV: per record ttl, bucket, queries, n, then n x (source, units, hits).
# Returns per record 1 (applied now) or 0 (applied before).
_APPLY = """
local out, a = {}, 1
for r = 0, (#KEYS - 5) / 3 - 1 do
  local k = 6 + 3 * r
  local ttl, bucket, q, n = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  a = a + 4
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ttl) then
    redis.call('HINCRBY', KEYS[2], bucket, q)
    redis.call('HINCRBY', KEYS[2], 'all', q)
    for i = a, a + 3 * (n - 1), 3 do
      redis.call('HINCRBY', KEYS[k + 1], ARGV[i], ARGV[i + 1])
      redis.call('HINCRBY', KEYS[4], ARGV[i], ARGV[i + 1])
      redis.call('HINCRBY', KEYS[k + 2], ARGV[i], ARGV[i + 2])
      redis.call('HINCRBY', KEYS[5], ARGV[i], ARGV[i + 2])
    end
    redis.call('ZADD', KEYS[3], bucket, bucket)
    redis.call('INCR', KEYS[1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  a = a + 3 * n
end
return out
"""
# Records per script call: one call blocks Redis while it runs (~20 us a record).
APPLY_CHUNK = 128

OUTAGE = (RedisError, OSError, asyncio.TimeoutError)
ADOPT_EVERY = 5  # replay ticks between looks for journal slots left by processes that are gone


def new_record(queries: int, credit: dict[str, int], hits: dict[str, int], bucket_s: int,
               record_id: str | None = None, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    return {"id": record_id or uuid.uuid4().hex, "bucket": int(now // bucket_s * bucket_s), "queries": queries,
            "credit": credit, "hits": hits}


class Ledger:
    """Writes records (Redis, else journal) and reads the aggregates."""

    def __init__(self, client: aioredis.Redis, prefix: str, journal: Journal, marker_ttl_s: int,
                 replay_interval_s: float = 1.0, idem_ttl_s: int | None = None):
        self.r, self.p, self.journal = client, prefix, journal
        self.marker_ttl_s, self.replay_interval_s = marker_ttl_s, replay_interval_s
        self.idem_ttl_s = idem_ttl_s or marker_ttl_s
        self.healthy = True
        self.replayed = 0
        self._script = client.register_script(_APPLY)
        self._task: asyncio.Task | None = None
        self._waiting: list[tuple[dict, asyncio.Future]] = []  # records for the next group commit
        self._committer: asyncio.Task | None = None
        # (has work, run): called by the replay loop while Redis answers (service.answers' outage answers)
        self.recovery_hooks: list[tuple[Callable[[], bool], Callable[[], Awaitable[int]]]] = []

    def key(self, *parts) -> str:
        return self.p + ":".join(str(p) for p in parts)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._replay_loop(), name="journal-replay")

    async def stop(self) -> None:
        if self._committer:  # let the last group commit finish: its requests wait for it
            await asyncio.gather(self._committer, return_exceptions=True)
        if self._task:
            await cancel_and_wait([self._task])

    def _ttl(self, rec: dict) -> int:
        return self.idem_ttl_s if str(rec["id"]).startswith("idem-") else self.marker_ttl_s

    async def apply_many(self, recs: list[dict]) -> list[bool]:
        """Apply to Redis, ``APPLY_CHUNK`` records per atomic script call;
        per record, False if it had been applied before."""
        out: list[bool] = []
        for c in range(0, len(recs), APPLY_CHUNK):
            keys = [self.key("rev"), self.key("queries"), self.key("buckets"), self.key("credit", "all"),
                    self.key("hits", "all")]
            args: list = []
            for rec in recs[c:c + APPLY_CHUNK]:
                keys += [self.key("applied", rec["id"]), self.key("credit", rec["bucket"]),
                         self.key("hits", rec["bucket"])]
                args += [self._ttl(rec), rec["bucket"], rec["queries"], len(rec["credit"])]
                for src, units in rec["credit"].items():
                    args += [src, units, rec["hits"].get(src, 0)]
            out += [bool(x) for x in await self._script(keys=keys, args=args)]
        return out

    async def record(self, rec: dict) -> str:
        """``"redis"``, ``"journal"``, or, not recorded, ``"full"`` (the journal
        holds ``max_entries``) or ``"unwritable"`` (its disk refused the append)."""
        if self.healthy:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            self._waiting.append((rec, fut))
            if self._committer is None or self._committer.done():
                self._committer = loop.create_task(self._commit(), name="ledger-commit")
            if await asyncio.shield(fut):
                return "redis"
        try:
            ok = await asyncio.to_thread(self.journal.append, rec)
        except JournalError as e:
            log.error("credit not recorded (Redis unreachable, %s): the request answers 503", e)
            return "unwritable"
        return "journal" if ok else "full"

    async def _commit(self) -> None:
        """Apply everything waiting, in rounds; each waiter learns whether
        its record reached Redis (else it journals it)."""
        while self._waiting:
            batch, self._waiting = self._waiting[:APPLY_CHUNK], self._waiting[APPLY_CHUNK:]
            ok = self.healthy
            if ok:
                try:
                    await self.apply_many([rec for rec, _ in batch])
                except OUTAGE as e:
                    if self.healthy:
                        log.warning("redis unreachable (%s): journaling credit until it is back", type(e).__name__)
                    self.healthy = ok = False
                except Exception as e:  # noqa: BLE001 - a bug: every waiter must hear of it
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(ok)

    async def replay(self, journal: Journal | None = None) -> int:
        """Apply every record of ``journal`` (default: this process's own);
        returns how many were new."""
        journal, new = journal or self.journal, 0
        for path in await asyncio.to_thread(journal.take):
            recs = await asyncio.to_thread(journal.read, path)
            new += sum(await self.apply_many(recs))
            await asyncio.to_thread(journal.done, path, len(recs))
        self.replayed += new
        return new

    def _orphans(self) -> list[Path]:
        """Other journal slots of the shared root that hold records and that no live process holds."""
        own, root = self.journal.dir, self.journal.root
        if root is None:
            return []
        out = []
        for _, d in slot_dirs(root):
            if d != own and any(p.stat().st_size for p in d.glob("*.jsonl")) and not slot_live(d):
                out.append(d)
        return out

    async def adopt(self) -> int:
        """Replay the slots left with records by processes that are gone
        (module doc), each under its lock; returns the new records."""
        new = 0
        for d in await asyncio.to_thread(self._orphans):
            fd = await asyncio.to_thread(try_lock, d)
            if fd is None:
                continue  # a process claimed it meanwhile: it replays it itself
            try:
                j = await asyncio.to_thread(Journal, d, self.journal.max_entries, self.journal.fsync)
                n = await self.replay(j)
                log.info("journal slot %s of a process that is gone: %d new records replayed", d.name, n)
                new += n
            finally:
                os.close(fd)
        return new

    async def _replay_loop(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(self.replay_interval_s)
            tick += 1
            hooks = [run for waiting, run in self.recovery_hooks if waiting()]
            shared = self.journal.root is not None and tick % ADOPT_EVERY == 0
            if self.healthy and not self.journal.entries and not hooks and not shared:
                continue
            try:
                await self.r.ping()
                self.healthy = True
                if self.journal.entries:
                    n = await self.replay()
                    log.info("journal replayed: %d new records", n)
                for run in hooks:
                    await run()
                if shared:
                    await self.adopt()
            except OUTAGE:
                self.healthy = False

    # ---- reading -------------------------------------------------------
    async def rev(self) -> int:
        return int(await self.r.get(self.key("rev")) or 0)

    async def totals(self) -> tuple[dict[str, int], dict[str, int], int]:
        """All-time (credit units by source, credited queries by source, queries)."""
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.key("credit", "all")).hgetall(self.key("hits", "all")).hget(self.key("queries"), "all")
            credit, hits, q = await pipe.execute()
        return _ints(credit), _ints(hits), int(q or 0)

    async def buckets(self, starts: list[int]) -> list[tuple[dict[str, int], dict[str, int], int]]:
        """Per bucket start: (credit by source, hits by source, queries)."""
        async with self.r.pipeline(transaction=True) as pipe:
            for b in starts:
                pipe.hgetall(self.key("credit", b)).hgetall(self.key("hits", b)).hget(self.key("queries"), b)
            flat = await pipe.execute()
        return [(_ints(flat[i]), _ints(flat[i + 1]), int(flat[i + 2] or 0)) for i in range(0, len(flat), 3)]

    async def bucket_range(self, start: int, end: int) -> list[int]:
        """Buckets with data whose start lies in ``[start, end)``."""
        return [int(float(b)) for b in await self.r.zrangebyscore(self.key("buckets"), start, f"({end}")]


def _ints(h: dict) -> dict[str, int]:
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in (h or {}).items()}
