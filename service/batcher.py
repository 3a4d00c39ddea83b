"""Micro-batcher: concurrent requests -> one readout.

Requests wait in a bounded queue (counted in queries). A single worker takes
the oldest request, then keeps adding requests until the batch holds
``max_batch`` queries or ``max_wait_s`` has passed since it started, and runs
the readout in a dedicated thread, off the event loop. With batching off,
every request is its own batch.

Adaptive wait (default): the batcher keeps a moving average of the gap
between arrivals and stops waiting as soon as the next request is not due
before the window closes. A lone request is not held back for company that
is not coming (at one client, the fixed window cost ~2x in throughput);
under load the gaps are short and the window fills as before.

Identical answers with batching on or off: a GEMM's row results can depend
on how many rows it has (BLAS picks other kernels for 1-2 rows; cuBLAS picks
by shape). So the readout always runs on blocks of exactly ``block`` rows,
the last padded with zeros: each query's numbers are the same whatever it
was batched with (checked bit for bit by the tests, and on every store load
by ``batch_invariant``, which also needs a row's numbers not to depend on
its position in the block; /readyz reports it).

What a readout is depends on the store's kind (``service.kinds``): a
request carries its rows and the ``ReadoutFn`` that scores them; the vector
one is here (``vector_readout``), the text one pads every query to the full
context and every block to a fixed number of rows, to the same end.

Hot swap: a request carries the ``Attributor`` that was current when it
arrived; a batch is split by attributor, so a request is answered by one
store version whole, and an old store stays alive until its last request is
answered.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import torch

from influence.attributor import Attributor
from influence.blocks import readout_rows

from .errors import ApiError, unavailable
from .tasks import cancel_and_wait

_GAP_WEIGHT = 0.25  # of the newest gap in the moving average: follows a change of load within a few requests


@dataclass
class Readout:
    """One request's rows of a batched readout (CPU tensors).

    probs ``(b, C)``, pred and target ``(b,)``, sources ``(b, S)``,
    examples ``(b, n)`` or None; seconds and the batch size in queries."""

    version: str
    probs: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    sources: torch.Tensor
    examples: torch.Tensor | None
    queue_s: float = 0.0
    readout_s: float = 0.0
    batch_queries: int = 0


ReadoutFn = Callable[[object, list, list[bool]], list]
"""``run(att, rows of each request, examples wanted by each)`` -> one
result per request (with ``queue_s``, ``readout_s``, ``batch_queries``);
runs in the readout thread. Each store kind has its own (``service.kinds``),
bound to its block size."""


@dataclass
class _Item:
    att: object  # the Attributor / TextAttributor the request started with
    rows: object  # what ``run`` takes: vector (x (b, d), y (b,)); text: list of encoded queries
    n: int  # queries
    group: tuple  # requests of one group share a readout call
    examples: bool
    run: ReadoutFn
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    def __len__(self) -> int:
        return self.n


def vector_readout(att: Attributor, rows: list[tuple[torch.Tensor, torch.Tensor, str]], examples: list[bool],
                   block: int) -> list[Readout]:
    """The vector store's ``ReadoutFn``: rows are ``(x (b, d), y (b,), output
    kind)``, one kind per group; one padded-block readout over all, split per request."""
    x = torch.cat([r[0] for r in rows])
    y = torch.cat([r[1] for r in rows])
    kind = rows[0][2]
    probs, pred, target, src, ex = readout_rows(att, x, y, kind, any(examples), block)
    out, s = [], 0
    for (xi, _, _), want in zip(rows, examples, strict=True):
        e = s + xi.shape[0]
        out.append(Readout(att.version, probs[s:e], pred[s:e], target[s:e], src[s:e],
                           ex[s:e] if ex is not None and want else None))
        s = e
    return out


class Batcher:
    """See the module doc. ``on_batch(queries, seconds)`` is told of each readout."""

    def __init__(self, max_batch: int, max_wait_s: float, queue_size: int, enabled: bool = True,
                 timeout_s: float = 30.0, retry_after_s: int = 1, on_batch: Callable[[int, float], None] | None = None,
                 adaptive: bool = True, workers: int = 1):
        self.max_batch, self.max_wait_s, self.workers = max_batch, max_wait_s, workers
        self.queue_size, self.enabled, self.timeout_s = queue_size, enabled, timeout_s
        self.retry_after_s, self.on_batch, self.adaptive = retry_after_s, on_batch, adaptive
        self._last_arrival = -math.inf
        self._gap = math.inf  # moving average of the seconds between arrivals
        self._pending: deque[_Item] = deque()
        self._queued = 0  # queries waiting
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="readout")
        self._tasks: list[asyncio.Task] = []

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name=f"batcher-{w}") for w in range(self.workers)]

    async def stop(self) -> None:
        if self._tasks:
            await cancel_and_wait(self._tasks)
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(unavailable("shutting down", self.retry_after_s))
        self._pool.shutdown(wait=True)

    async def submit(self, att: Attributor, x: torch.Tensor, y: torch.Tensor, kind: str, examples: bool,
                     block: int) -> Readout:
        """A vector store's request: rows ``x (b, d)``, targets ``y`` (-1 =
        predicted) scored on output ``kind``, read out in blocks of ``block`` rows."""
        return await self.submit_rows(att, (x, y, kind), x.shape[0], (id(att), kind, block), examples,
                                      partial(vector_readout, block=block))

    async def submit_rows(self, att, rows, n: int, group: tuple, examples: bool, run: ReadoutFn):
        """Queue one request's ``n`` queries and wait for its readout (503
        when the queue is full, 504 past ``timeout_s``). Requests with the
        same ``group`` (which holds the attributor's id) may share a
        ``run`` call."""
        if self._queued + n > self.queue_size:
            raise unavailable("too many queries waiting; retry later", self.retry_after_s, "overloaded")
        item = _Item(att, rows, n, group, examples, run, asyncio.get_running_loop().create_future())
        gap = min(item.enqueued - self._last_arrival, 1.0)  # (bounded: an idle spell must not linger)
        self._gap = gap if math.isinf(self._gap) else self._gap + _GAP_WEIGHT * (gap - self._gap)
        self._last_arrival = item.enqueued
        self._pending.append(item)
        self._queued += len(item)
        self._wake.set()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.shield(item.future)
        except TimeoutError:
            item.future.cancel()  # skipped if still queued, dropped if running
            raise ApiError(504, "timeout", f"no answer within {self.timeout_s:g} s") from None

    async def _take(self) -> list[_Item]:
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()
        batch = [self._pending.popleft()]
        rows = len(batch[0])
        deadline = time.perf_counter() + self.max_wait_s
        while self.enabled and rows < self.max_batch:
            if not self._pending:
                left = deadline - time.perf_counter()
                if left <= 0 or (self.adaptive and self._last_arrival + self._gap > deadline):
                    break
                self._wake.clear()
                try:
                    async with asyncio.timeout(left):
                        await self._wake.wait()
                except TimeoutError:
                    break
                continue
            if rows + len(self._pending[0]) > self.max_batch:
                break
            batch.append(self._pending.popleft())
            rows += len(batch[-1])
        for item in batch:
            self._queued -= len(item)
        return [i for i in batch if not i.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            groups: dict[tuple, list[_Item]] = {}
            for item in batch:
                groups.setdefault(item.group, []).append(item)
            size = sum(len(i) for i in batch)
            for items in groups.values():
                t0 = time.perf_counter()
                try:
                    res = await loop.run_in_executor(self._pool, self._readout, items)
                except Exception as e:  # noqa: BLE001 - handed to the waiting requests
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(e)
                    continue
                dt = time.perf_counter() - t0
                if self.on_batch:
                    self.on_batch(sum(len(i) for i in items), dt)
                try:
                    for item, r in zip(items, res, strict=True):
                        if not item.future.done():
                            r.queue_s, r.readout_s, r.batch_queries = t0 - item.enqueued, dt, size
                            item.future.set_result(r)
                except Exception as e:  # noqa: BLE001 - a malformed readout fails its requests, not this loop
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(e)

    def _readout(self, items: list[_Item]) -> list:
        return items[0].run(items[0].att, [i.rows for i in items], [i.examples for i in items])
