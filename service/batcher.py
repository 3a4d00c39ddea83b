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

What a readout is depends on the store's kind (``service.forms``): a
request carries its rows and the ``ReadoutFn`` that scores them; the vector
one is here (``vector_readout``), the text one pads every query to the full
context and every block to a fixed number of rows, to the same end.

Fair share (issue 28): a request's rows come split into pieces (``Piece``:
one readout block each, cut by the store's kind so that the block shapes
still depend on nothing but the rows' length bucket), and each readout
round takes at most one piece of every waiting request, oldest first, up to
``max_batch`` queries: a large request is read out a block per round
beside everyone else, so a small query that arrives behind it waits for at
most one of its blocks, not for all of them. A request whose waiter is gone
(504 past ``request_timeout_s``, or cancelled: the client disconnected)
loses its remaining pieces between rounds (``dropped_pieces`` counts them).
The pieces' results are joined back into the request's order
(``join_parts``); each query's numbers are its block's, so answers stay
bit-identical.

Hot swap: a request carries the attributor that was current when it
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
from dataclasses import dataclass, field, fields
from functools import partial

import torch

from influence.blocks import readout_rows
from influence.mlp.attributor import VectorAttributor

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
runs in the readout thread. Each store kind has its own (``service.forms``),
bound to its block size."""


@dataclass
class Piece:
    """One readout block of a request: ``rows`` (what the ``ReadoutFn``
    takes), ``n`` queries, and ``at``: their positions in the request (None:
    the piece is the whole request, in order)."""

    rows: object
    n: int
    at: list[int] | None = None


@dataclass
class _Item:
    att: object  # the attributor the request started with
    pieces: list[Piece]  # vector: (x (b, d), y (b,), kind); text: list of encoded queries
    n: int  # queries
    group: tuple  # requests of one group share a readout call
    examples: bool
    run: ReadoutFn
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    issued: int = 0  # pieces handed to a readout round
    parts: list = field(default_factory=list)  # their results, by piece
    started: float | None = None  # when its first piece was read out
    readout_s: float = 0.0  # seconds of the readout calls its pieces rode in
    company: int = 0  # other requests' queries in the rounds its pieces rode in

    def __post_init__(self):
        self.parts = [None] * len(self.pieces)

    def waiting(self) -> int:
        """Queries of the pieces not yet issued."""
        return sum(p.n for p in self.pieces[self.issued:])

    def __len__(self) -> int:
        return self.n


def join_parts(parts: list, pieces: list[Piece], n: int):
    """The pieces' results (dataclasses of per-query rows: tensors ``(b, ...)``
    or lists) as one result of ``n`` queries in the request's order (a piece
    without ``at`` holds the next ``n`` positions); a field that some part
    lacks (None: documents not read) is None; other fields (the version) are
    the first part's."""
    if len(parts) == 1:
        return parts[0]
    order, pos = [], 0
    for p in pieces:
        order += p.at if p.at is not None else range(pos, pos + p.n)
        pos += p.n
    inverse = sorted(range(n), key=order.__getitem__)
    values = {}
    for f in fields(parts[0]):
        got = [getattr(r, f.name) for r in parts]
        if any(g is None for g in got):
            values[f.name] = None
        elif isinstance(got[0], torch.Tensor):
            values[f.name] = torch.cat(got)[inverse]
        elif isinstance(got[0], list):
            flat = [x for g in got for x in g]
            values[f.name] = [flat[i] for i in inverse]
        else:
            values[f.name] = got[0]
    return type(parts[0])(**values)


def vector_readout(att: VectorAttributor, rows: list[tuple[torch.Tensor, torch.Tensor, str]], examples: list[bool],
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
        self.dropped_pieces = 0  # pieces of requests whose waiter was gone, never read out
        self.rounds = 0  # readout rounds run

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

    async def submit(self, att: VectorAttributor, x: torch.Tensor, y: torch.Tensor, kind: str, examples: bool,
                     block: int) -> Readout:
        """A vector store's request: rows ``x (b, d)``, targets ``y`` (-1 =
        predicted) scored on output ``kind``, read out in blocks of ``block`` rows
        (a piece each)."""
        pieces = [Piece((x[s:s + block], y[s:s + block], kind), min(block, x.shape[0] - s))
                  for s in range(0, x.shape[0], block)]
        return await self.submit_rows(att, (x, y, kind), x.shape[0], (id(att), kind, block), examples,
                                      partial(vector_readout, block=block), pieces)

    async def submit_rows(self, att, rows, n: int, group: tuple, examples: bool, run: ReadoutFn,
                          pieces: list[Piece] | None = None):
        """Queue one request's ``n`` queries and wait for its readout (503
        when the queue is full, 504 past ``timeout_s``). Requests with the
        same ``group`` (which holds the attributor's id) may share a
        ``run`` call. ``pieces``: the rows cut into readout blocks (default:
        ``rows`` whole, one piece)."""
        if self._queued + n > self.queue_size:
            raise unavailable("too many queries waiting; retry later", self.retry_after_s, "overloaded")
        item = _Item(att, pieces or [Piece(rows, n)], n, group, examples, run,
                     asyncio.get_running_loop().create_future())
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
            item.future.cancel()  # its pieces not yet read out are dropped, a running one's result discarded
            raise ApiError(504, "timeout", f"no answer within {self.timeout_s:g} s") from None
        finally:
            item.future.cancel()  # (no-op once answered) the waiter is gone: cancelled, e.g. a client that left

    def _drop_gone(self) -> None:
        """Requests whose waiter is gone leave the queue with their pieces."""
        for item in [i for i in self._pending if i.future.done()]:
            self._pending.remove(item)
            self._queued -= item.waiting()
            self.dropped_pieces += len(item.pieces) - item.issued

    def _round(self) -> list[tuple[_Item, int]]:
        """One piece of each waiting request, oldest first, up to ``max_batch``
        queries (the first piece always); -> (request, piece index)."""
        out, rows = [], 0
        for item in list(self._pending):
            n = item.pieces[item.issued].n
            if out and (not self.enabled or rows + n > self.max_batch):
                break
            out.append((item, item.issued))
            item.issued += 1
            rows += n
            self._queued -= n
            self._pending.remove(item)
            if item.issued < len(item.pieces):
                self._pending.append(item)  # its next piece waits for the next round, behind the others
        return out

    async def _take(self) -> list[tuple[_Item, int]]:
        while True:
            self._drop_gone()
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
                self._drop_gone()
            if self.enabled and not self._pending[0].issued:  # (a request under way is not held back)
                await self._window()
                self._drop_gone()
            if self._pending:
                return self._round()

    async def _window(self) -> None:
        """Wait for company until the next round would hold ``max_batch``
        queries, ``max_wait_s`` has passed, or (adaptive) no arrival is due."""
        deadline = time.perf_counter() + self.max_wait_s
        while sum(i.pieces[i.issued].n for i in self._pending) < self.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0 or (self.adaptive and self._last_arrival + self._gap > deadline):
                return
            self._wake.clear()
            try:
                async with asyncio.timeout(left):
                    await self._wake.wait()
            except TimeoutError:
                return

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            self.rounds += 1
            groups: dict[tuple, list[tuple[_Item, int]]] = {}
            for item, k in batch:
                groups.setdefault(item.group, []).append((item, k))
            size = sum(item.pieces[k].n for item, k in batch)
            for members in groups.values():
                t0 = time.perf_counter()
                try:
                    res = await loop.run_in_executor(self._pool, self._readout, members)
                except Exception as e:  # noqa: BLE001 - handed to the waiting requests
                    self._fail(members, e)
                    continue
                dt = time.perf_counter() - t0
                if self.on_batch:
                    self.on_batch(sum(item.pieces[k].n for item, k in members), dt)
                try:
                    for (item, k), r in zip(members, res, strict=True):
                        self._deliver(item, k, r, t0, dt, size)
                except Exception as e:  # noqa: BLE001 - a malformed readout fails its requests, not this loop
                    self._fail(members, e)

    def _deliver(self, item: _Item, k: int, r, t0: float, dt: float, size: int) -> None:
        """Piece ``k``'s result; the request is answered with its last piece."""
        if item.future.done():
            return
        item.parts[k] = r
        item.started = t0 if item.started is None else min(item.started, t0)
        item.readout_s += dt
        item.company += size - item.pieces[k].n
        if any(p is None for p in item.parts):
            return
        out = join_parts(item.parts, item.pieces, item.n)
        out.queue_s, out.readout_s = item.started - item.enqueued, item.readout_s
        out.batch_queries = item.n + item.company  # (its own queries and those read out beside them)
        item.future.set_result(out)

    @staticmethod
    def _fail(members: list[tuple[_Item, int]], e: Exception) -> None:
        for item, _ in members:
            if not item.future.done():
                item.future.set_exception(e)

    def _readout(self, members: list[tuple[_Item, int]]) -> list:
        first = members[0][0]
        return first.run(first.att, [item.pieces[k].rows for item, k in members],
                         [item.examples for item, _ in members])
