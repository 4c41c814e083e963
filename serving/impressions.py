"""The impression log: each record serialised once its response is sent, written by one thread.

A ranked request's record is turned into JSON on the event loop right after the response went out
(the route's background task), then handed to a bounded queue; a writer thread drains the queue
every `interval` seconds and writes the batch to a Redis stream (XADD MAXLEN ~) or a JSONL file.
Why not serialise on the writer thread: orjson holds the GIL for the whole record (about 0.1 ms at
500 candidates with the served features), so a writer woken per record took the GIL from the next
request, and its wake-up took a core from ONNX Runtime's threads; the thread now only does I/O,
which releases the GIL, and wakes a few times a second. Nothing is lost silently: a record that
cannot be serialised, a full queue, or a batch the sink refused three times, is logged and
counted in /metrics.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
import redis

log = logging.getLogger("ranker.serving.impressions")

BATCH = 256
ATTEMPTS = 3
# Seconds between the writer's drains: a record reaches the sink within about this long.
INTERVAL = 0.05


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode_default(value: Any) -> Any:
    """orjson's fallback: record parts built lazily, off the request path (served features)."""
    to_json = getattr(value, "to_json", None)
    if to_json is None:
        raise TypeError(f"cannot serialise {type(value).__name__} in an impression record")
    return to_json()


class Sink(Protocol):
    description: str

    def write(self, lines: Sequence[bytes]) -> None: ...

    def close(self) -> None: ...


# JSONL rotation: past ROTATE_BYTES the file becomes <name>.1 (.1 becomes .2, ...), and at most
# KEEP rotated files are kept, so the log stays under (KEEP + 1) * ROTATE_BYTES plus one batch.
ROTATE_BYTES = 256 * 1024 * 1024
KEEP = 4
# Lines per writev call: two buffers each (the line, its newline), within the system's IOV_MAX.
_IOV_LINES = os.sysconf("SC_IOV_MAX") // 2


class JsonlSink:
    """Appends one JSON object per line. A batch lands whole or not at all: it is written
    unbuffered, and a failed write (disk full) is cut back to the file's previous length, so the
    file never holds a torn line or a record that was counted as failed. Rotated by size between
    batches (never inside one), so every file holds whole lines."""

    def __init__(self, path: Path, max_bytes: int = ROTATE_BYTES, keep: int = KEEP) -> None:
        if max_bytes < 1 or keep < 1:
            raise ValueError(f"impression log rotation: max_bytes and keep must be >= 1 ({path})")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.description = f"jsonl {self.path}"
        self.max_bytes = max_bytes
        self.keep = keep
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, lines: Sequence[bytes]) -> None:
        start = os.fstat(self._fd).st_size
        try:
            for first in range(0, len(lines), _IOV_LINES):
                self._write_lines(lines[first : first + _IOV_LINES])
        except OSError:
            os.ftruncate(self._fd, start)
            raise
        if os.fstat(self._fd).st_size >= self.max_bytes:
            self._rotate()

    def _write_lines(self, lines: Sequence[bytes]) -> None:
        """One writev of the lines and their newlines, no copy of the batch into one buffer:
        that copy held the GIL 1.15 ms per drain of 25 records of 500 candidates and delayed the
        request in flight; the syscall itself releases it."""
        pieces = [piece for line in lines for piece in (line, b"\n")]
        written = os.writev(self._fd, pieces)
        if written < sum(map(len, pieces)):  # a short write (rare on a file): the rest in turn
            rest = memoryview(b"".join(pieces))[written:]
            while rest:
                rest = rest[os.write(self._fd, rest) :]

    def _rotate(self) -> None:
        """<name> -> <name>.1 -> ... -> <name>.<keep> (the oldest is replaced); a fresh file."""
        try:
            for n in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            fd = self._open()
        except OSError as exc:  # the batch is written; keep appending to the current file
            log.error("rotating impression log %s: %s", self.path, exc)
            return
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError as exc:  # shutdown must not fail on a full disk
            log.error("closing impression log %s: %s", self.path, exc)


class RedisStreamSink:
    """XADD each record as field `record` (JSON); the stream is trimmed to about `maxlen`."""

    def __init__(self, client: redis.Redis, stream: str, maxlen: int) -> None:
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self.description = f"redis stream {stream}"

    def write(self, lines: Sequence[bytes]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for line in lines:
            pipe.xadd(self.stream, {"record": line}, maxlen=self.maxlen, approximate=True)
        pipe.execute()

    def close(self) -> None:
        self.client.close()


class ImpressionWriter:
    """Bounded queue + writer thread. `submit` never blocks and never raises."""

    def __init__(self, sink: Sink | None, capacity: int, interval: float = INTERVAL) -> None:
        self.sink = sink
        self.capacity = capacity
        self.interval = interval
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=capacity)
        self._stop = threading.Event()
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self.sink is not None:
            self._thread = threading.Thread(
                target=self._run, name="ranker-impressions", daemon=True
            )
            self._thread.start()

    def submit(self, record: dict[str, Any]) -> None:
        """Serialise the record here (numpy arrays and the served features included) and queue
        its line; a record that cannot be serialised is counted, never raised."""
        if self.sink is None:
            return
        try:
            line = orjson.dumps(record, default=encode_default, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError as exc:
            self.failed += 1
            log.error("impression record %s not serialisable: %s", record.get("request_id"), exc)
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("impression queue full: %d records dropped so far", self.dropped)

    def _run(self) -> None:
        # A timed wait, not a blocking get: submit() wakes nobody (no waiter to notify).
        while not self._stop.wait(self.interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        while True:
            lines: list[bytes] = []
            while len(lines) < BATCH:
                try:
                    lines.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not lines:
                return
            self._write(lines)

    def _write(self, lines: list[bytes]) -> None:
        assert self.sink is not None
        error: Exception | None = None
        for attempt in range(ATTEMPTS):
            try:
                self.sink.write(lines)
                self.written += len(lines)
                return
            except Exception as exc:  # any sink failure: retry, then count and log
                error = exc
                time.sleep(0.05 * (attempt + 1))
        self.failed += len(lines)
        log.error(
            "impression log %s refused %d records (%d failed so far): %s",
            self.sink.description,
            len(lines),
            self.failed,
            error,
        )

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error(
                    "impression writer still busy after %.0f s; %d queued", timeout, self.depth()
                )
        if self.sink is not None:
            self.sink.close()
