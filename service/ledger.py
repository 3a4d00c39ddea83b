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
in the data dir; a background task replays them once Redis answers again.
Because of the marker, a replay interrupted half way and run again still
counts each record exactly once. The journal holds at most
``journal_max_entries`` records: beyond that a recording request gets 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .tasks import cancel_and_wait

log = logging.getLogger("service.ledger")

_APPLY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local bucket, n = ARGV[2], tonumber(ARGV[4])
redis.call('HINCRBY', KEYS[6], bucket, ARGV[3])
redis.call('HINCRBY', KEYS[6], 'all', ARGV[3])
for i = 0, n - 1 do
  local src, units, hits = ARGV[5 + 3 * i], ARGV[6 + 3 * i], ARGV[7 + 3 * i]
  redis.call('HINCRBY', KEYS[2], src, units)
  redis.call('HINCRBY', KEYS[4], src, units)
  redis.call('HINCRBY', KEYS[3], src, hits)
  redis.call('HINCRBY', KEYS[5], src, hits)
end
redis.call('ZADD', KEYS[7], bucket, bucket)
redis.call('INCR', KEYS[8])
return 1
"""

OUTAGE = (RedisError, OSError, asyncio.TimeoutError)


def new_record(queries: int, credit: dict[str, int], hits: dict[str, int], bucket_s: int,
               record_id: str | None = None, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    return {"id": record_id or uuid.uuid4().hex, "bucket": int(now // bucket_s * bucket_s), "queries": queries,
            "credit": credit, "hits": hits}


class Journal:
    """Bounded append-only JSON-lines file; thread safe."""

    def __init__(self, directory: Path, max_entries: int, fsync: bool = True):
        self.dir, self.max_entries, self.fsync = Path(directory), max_entries, fsync
        self.dir.mkdir(parents=True, exist_ok=True)
        self.active = self.dir / "active.jsonl"
        self._lock = threading.Lock()
        self.entries = sum(len(self._read(p)) for p in self.dir.glob("*.jsonl"))

    @staticmethod
    def _read(path: Path) -> list[dict]:
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                log.warning("%s: skipping a torn line (its request was never answered)", path)
        return out

    def append(self, record: dict) -> bool:
        """False when full (nothing written)."""
        with self._lock:
            if self.entries >= self.max_entries:
                return False
            with open(self.active, "a") as f:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            self.entries += 1
            return True

    def take(self) -> list[Path]:
        """Rotate the active file out; returns every file waiting for replay."""
        with self._lock:
            if self.active.exists() and self.active.stat().st_size:
                self.active.rename(self.dir / f"replay-{time.time_ns()}.jsonl")
            return sorted(self.dir.glob("replay-*.jsonl"))

    def done(self, path: Path, n: int) -> None:
        with self._lock:
            path.unlink(missing_ok=True)
            self.entries = max(0, self.entries - n)


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

    def key(self, *parts) -> str:
        return self.p + ":".join(str(p) for p in parts)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._replay_loop(), name="journal-replay")

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait([self._task])

    async def apply(self, rec: dict) -> bool:
        """Apply to Redis; False if it had been applied before."""
        keys = [self.key("applied", rec["id"]), self.key("credit", rec["bucket"]), self.key("hits", rec["bucket"]),
                self.key("credit", "all"), self.key("hits", "all"), self.key("queries"), self.key("buckets"),
                self.key("rev")]
        ttl = self.idem_ttl_s if str(rec["id"]).startswith("idem-") else self.marker_ttl_s
        args = [ttl, rec["bucket"], rec["queries"], len(rec["credit"])]
        for src, units in rec["credit"].items():
            args += [src, units, rec["hits"].get(src, 0)]
        return bool(await self._script(keys=keys, args=args))

    async def record(self, rec: dict) -> str:
        """``"redis"``, ``"journal"``, or ``"full"`` (not recorded)."""
        if self.healthy:
            try:
                await self.apply(rec)
                return "redis"
            except OUTAGE as e:
                if self.healthy:
                    log.warning("redis unreachable (%s): journaling credit until it is back", type(e).__name__)
                self.healthy = False
        ok = await asyncio.to_thread(self.journal.append, rec)
        return "journal" if ok else "full"

    async def replay(self) -> int:
        """Apply every journaled record; returns how many were new."""
        new = 0
        for path in await asyncio.to_thread(self.journal.take):
            recs = await asyncio.to_thread(self.journal._read, path)
            for rec in recs:
                new += await self.apply(rec)
            await asyncio.to_thread(self.journal.done, path, len(recs))
        self.replayed += new
        return new

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(self.replay_interval_s)
            if self.healthy and not self.journal.entries:
                continue
            try:
                await self.r.ping()
                self.healthy = True
                if self.journal.entries:
                    n = await self.replay()
                    log.info("journal replayed: %d new records", n)
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
