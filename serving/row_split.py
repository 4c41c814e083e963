"""One request's candidates scored as row chunks at once: the caller's thread runs the first chunk
on a one-thread ONNX Runtime session, a helper thread each other chunk.

Why not ORT's own intra-op pool: with its workers sleeping between parallel sections (the
service's default, RANKER_ORT_SPINNING=off) every operator wakes them again, dozens of wake-ups
per run; spinning workers avoid that but hold a core between requests. A chunk per thread needs
two hand-offs per request (start and done) and no synchronisation inside the run. On the 2-core
development machine a 500-candidate call of the demo model took 0.60x the time of the 2-thread
sleeping pool and 0.99x that of ORT's always-spinning one (which holds a core between requests);
below about 64-100 candidates the hand-offs cost more than they save, and the request runs whole
on one thread (docs/benchmarks.md, "Serving: row chunks vs ORT's thread pool").

Hand-offs are plain `threading.Lock`s, the cheapest wake-up Python has: the executor's
futures and conditions added about 0.1 ms per request. The session's `run` releases the GIL, so
the chunks run in parallel. One splitter serves every model of the process; a caller that finds
it busy (a warm-up on the state watcher's thread while a request runs, or a lagging helper still
on the last request's chunk) gets None and runs the whole request itself.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class _Helper(Generic[A, R]):
    """A daemon thread that runs one job whenever `start` gives it one.

    Every `start` is answered by exactly one release of `_done`, whether the job ran or was
    taken back (`take_back`) before the thread got to it; `pending` says that answer has not
    been collected yet (a straggler still running, or its result not read)."""

    def __init__(self, name: str) -> None:
        self.cpu: int | None = None  # the CPU it is pinned to, if any
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._claim = threading.Lock()  # who takes the job: this thread or the caller
        self._job: tuple[Callable[[A], R], A] | None = None
        self._result: R | None = None
        self._error: BaseException | None = None
        self._closing = False
        self.pending = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def start(self, fn: Callable[[A], R], arg: A) -> None:
        self._job = (fn, arg)
        self.pending = True
        self._go.release()

    def wait(self, timeout: float = -1) -> tuple[bool, R | None, BaseException | None]:
        """(answered, result, exception) once the job has finished or was taken back; answered is
        False when `timeout` seconds passed first (the job may still run)."""
        if not self._done.acquire(timeout=timeout):
            return False, None, None
        self.pending = False
        result, error = self._result, self._error
        self._result = self._error = None
        return True, result, error

    def take_back(self) -> None:
        """Take the job away if this thread has not begun it (it then skips it); once begun, it
        runs to the end and its answer is collected (and dropped) later."""
        with self._claim:
            self._job = None

    def collect(self) -> bool:
        """Collect a late answer without waiting; False while the straggler still runs."""
        return not self.pending or self.wait(timeout=0)[0]

    def close(self) -> None:
        self._closing = True
        self._job = None
        self._go.release()
        self._thread.join()

    def pin(self, cpu: int) -> None:
        thread = self._thread.native_id  # set once the thread runs (start() waits for that)
        if cpu != self.cpu and thread is not None:
            os.sched_setaffinity(thread, {cpu})
            self.cpu = cpu

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            if self._closing:
                return
            with self._claim:
                job, self._job = self._job, None
            if job is not None:
                try:
                    self._result = job[0](job[1])
                except BaseException as exc:  # handed to the caller, raised there
                    self._error = exc
            self._done.release()


class RowSplitter:
    """Runs a function over up to `parts` arguments at once, the first on the calling thread.

    A helper that lags (its core taken by a kernel worker or another process for a time slice,
    3-5 ms on this machine) does not hold the request: once the caller's own chunk is done, it
    waits `grace` x that chunk's time for each helper, then runs the helper's chunk itself (a
    backup task, as MapReduce runs for stragglers): the results are the same, whichever thread
    computes them. A straggler's late answer is collected by the next `map`; while one still
    runs, `map` answers None and the caller runs the request whole.

    `cpus` (one per part): before each `map`, the helpers are pinned to the CPUs the caller is
    not on (glibc's sched_getcpu; a pin changes only when the caller has moved). Unpinned, a
    woken helper often landed on the caller's core and pre-empted it, so the chunks ran one after
    the other (demo model, 100 candidates: 0.30 ms split against 0.24 whole; 0.22 pinned).
    Pinning the caller too cost the tail: a kernel worker on its core then held it for a time
    slice (p99 at 100 candidates 3.0-3.8 ms against 1.8 unpinned; this way 1.9-2.2 ms, p50 as
    low as with the caller pinned). See `exclusive_cpus` for when pinning is safe.
    """

    def __init__(
        self,
        parts: int,
        name: str = "ranker-rows",
        cpus: Sequence[int] | None = None,
        grace: float = 0.5,
        min_grace_s: float = 100e-6,
    ) -> None:
        if parts < 2:
            raise ValueError(f"a row splitter needs at least 2 parts, got {parts}")
        if cpus is not None and len(cpus) != parts:
            raise ValueError(f"{len(cpus)} CPUs to pin for a splitter of {parts} parts")
        self.parts = parts
        self.cpus = tuple(cpus) if cpus is not None else None
        self.grace = grace
        self.min_grace_s = min_grace_s
        self._helpers: list[_Helper[object, object]] = [
            _Helper(f"{name}-{i}") for i in range(1, parts)
        ]
        self._busy = threading.Lock()
        self._closed = False
        self.runs = 0  # calls that ran split (not the ones that found it busy)
        self.taken_back = 0  # chunks the caller ran itself because a helper lagged
        self.declined = 0  # calls answered None: busy, or a straggler still running

    def map(self, fn: Callable[[A], R], args: Sequence[A]) -> list[R] | None:
        """`[fn(a) for a in args]` computed at once; None (nothing run) when another thread is
        using the splitter, a straggler from an earlier call still runs, or it is closed. The
        first exception raised, once every helper has answered."""
        if not 1 <= len(args) <= self.parts:
            raise ValueError(f"{len(args)} chunks for a splitter of {self.parts} parts")
        if not self._busy.acquire(blocking=False):
            self.declined += 1
            return None
        try:
            helpers: list[_Helper[A, R]] = self._helpers[: len(args) - 1]  # type: ignore[assignment]
            if self._closed:
                return None
            if not all(helper.collect() for helper in helpers):
                self.declined += 1
                return None
            if self.cpus is not None:  # the helpers on the CPUs the caller is not on
                here = _current_cpu()
                base = self.cpus.index(here) if here in self.cpus else 0
                for i, helper in enumerate(helpers, 1):
                    helper.pin(self.cpus[(base + i) % self.parts])
            for helper, arg in zip(helpers, args[1:], strict=True):
                helper.start(fn, arg)
            started = time.perf_counter()
            results: list[R] = []
            error: BaseException | None = None
            try:
                results.append(fn(args[0]))
            except BaseException as exc:  # the helpers must answer before it propagates
                error = exc
            deadline = time.perf_counter()
            deadline += max(self.min_grace_s, self.grace * (deadline - started))
            for helper, arg in zip(helpers, args[1:], strict=True):
                # After an exception, wait for the helpers: nothing runs on behind the caller's back.
                timeout = -1.0 if error is not None else max(0.0, deadline - time.perf_counter())
                answered, result, helper_error = helper.wait(timeout)
                if not answered:  # a straggler: run its chunk here
                    helper.take_back()
                    self.taken_back += 1
                    try:
                        result = fn(arg)
                    except BaseException as exc:
                        error = exc
                    helper.collect()
                error = error or helper_error
                results.append(result)  # type: ignore[arg-type]
            self.runs += 1
            if error is not None:
                raise error
            return results
        finally:
            self._busy.release()

    def close(self) -> None:
        """Stop the helper threads (after any straggler's run); `map` returns None from now on."""
        with self._busy:
            if self._closed:
                return
            self._closed = True
            for helper in self._helpers:
                if helper.pending:
                    helper.wait()
                helper.close()


_LIBC = ctypes.CDLL(None, use_errno=True)


def _current_cpu() -> int:
    """The CPU the calling thread runs on (glibc's sched_getcpu, ~0.1 us)."""
    return int(_LIBC.sched_getcpu())


def exclusive_cpus(parts: int) -> list[int] | None:
    """The process's CPUs when it may pin `parts` threads to them: exactly `parts` CPUs allowed
    (a container with an exclusive cpuset, a machine of that size). None otherwise: where the
    process may run on more CPUs than it owns (a CPU quota on a big host), pinning would herd
    every replica onto the same few CPUs."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return cpus if len(cpus) == parts else None


def chunk_bounds(rows: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous [start, stop) ranges covering `rows`, sizes differing by at most one."""
    step, extra = divmod(rows, parts)
    bounds = []
    start = 0
    for i in range(parts):
        stop = start + step + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds
