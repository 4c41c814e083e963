"""Dynamic batching: concurrent requests merged into one run of the batched graph.

An accelerator's throughput comes from batching (Triton's dynamic batcher): a kernel launch costs
about the same for 100 rows as for 10,000, so requests that arrive together should run together.
A request waits at most `max_delay_us` for company, a batch holds at most `max_batch` requests,
and while one batch runs the next one gathers, so under load batches form without any delay.

The batched graph (`training.export.to_onnx(batched=True)`) takes user rows [B, ...], item rows
[N_total, ...] and `request_index` [N_total], each item's row in the user inputs: rows of
different requests never meet, and each request gets back exactly its own slice of the outputs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from ranker.registry import REQUEST_INDEX

Feeds = Mapping[str, np.ndarray]
# One run of the batched graph: merged feeds -> one array per output, N_total rows each.
Run = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


def merge(requests: Sequence[tuple[Feeds, Feeds]]) -> tuple[dict[str, np.ndarray], list[int]]:
    """[(user feeds with batch 1, item feeds with batch n_r)] -> batched feeds and the item offsets
    (len(requests) + 1 of them) that split the outputs back."""
    if not requests:
        raise ValueError("merge needs at least one request")
    counts = []
    for user, item in requests:
        sizes = {len(v) for v in user.values()}
        if sizes != {1}:
            raise ValueError(f"each request's user inputs need batch 1, got {sorted(sizes)}")
        n = {len(v) for v in item.values()}
        if len(n) != 1:
            raise ValueError(f"a request's item inputs differ in length: {sorted(n)}")
        counts.append(n.pop())
    first_user, first_item = requests[0]
    feeds = {k: np.concatenate([u[k] for u, _ in requests]) for k in first_user}
    feeds.update({k: np.concatenate([i[k] for _, i in requests]) for k in first_item})
    feeds[REQUEST_INDEX] = np.repeat(np.arange(len(requests), dtype=np.int64), counts)
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    return feeds, offsets


def split(outputs: Sequence[np.ndarray], offsets: Sequence[int]) -> list[list[np.ndarray]]:
    """Per request, its rows of every output (views, no copy)."""
    return [[np.asarray(out)[lo:hi] for out in outputs] for lo, hi in pairwise(offsets)]


@dataclass
class _Pending:
    user: Feeds
    item: Feeds
    future: asyncio.Future[list[np.ndarray]]


class RequestBatcher:
    """Queue requests, run them in batches of at most `max_batch` on `executor` (a thread, so the
    event loop keeps accepting requests while the graph runs), hand each caller its own rows.

    One batch runs at a time: the accelerator is one device, and the next batch fills meanwhile.
    The worker task lives while requests are queued: once a batch leaves the queue empty it ends,
    and the next request starts another, so an idle batcher (one of a version a swap dropped)
    holds nothing but its counters.
    """

    def __init__(
        self,
        run: Run,
        *,
        max_batch: int,
        max_delay_us: int,
        executor: Executor | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_delay_us < 0:
            raise ValueError(f"max_delay_us must be >= 0, got {max_delay_us}")
        self._run = run
        self.max_batch = max_batch
        # asyncio's timers sleep in epoll, whose resolution is 1 ms: a shorter wait costs 1 ms.
        self.max_delay = max_delay_us / 1e6
        self._executor = executor
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        # Requests per batch -> batches run (bounded: at most max_batch keys), for tests and metrics.
        self.batch_sizes: Counter[int] = Counter()

    @property
    def running(self) -> bool:
        """True while a worker serves queued requests (it ends once the queue is empty)."""
        return self._worker is not None and not self._worker.done()

    async def predict(self, user: Feeds, item: Feeds) -> list[np.ndarray]:
        """One request's outputs (one array per graph output, its candidates' rows)."""
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve(), name="ranker-batcher")
        assert self._queue is not None
        future: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(user, item, future))
        return await future

    async def close(self) -> None:
        """Stop the worker; requests still queued fail with CancelledError."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait().future.cancel()

    async def _gather(self, queue: asyncio.Queue[_Pending]) -> list[_Pending]:
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _serve(self) -> None:
        assert self._queue is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        # No await between this check and the return: `predict` sees the task done and starts
        # another, never a queue that no worker reads.
        while not queue.empty():
            batch = [p for p in await self._gather(queue) if not p.future.cancelled()]
            if not batch:
                continue
            try:
                feeds, offsets = merge([(p.user, p.item) for p in batch])
                outputs = await loop.run_in_executor(self._executor, self._run, feeds)
                parts = split(outputs, offsets)
            except Exception as exc:  # every caller of the batch learns why
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self.batch_sizes[len(batch)] += 1
            for p, part in zip(batch, parts, strict=True):
                if not p.future.done():
                    p.future.set_result(part)
