"""Structured logs: one JSON object per line, on stdlib logging.

Every line logged while a request is handled carries its `request_id` (a context variable read
by a filter), and the access line of each /rank request also names `model_version`, `variant`,
`status`, `duration_ms` and `candidates`. Records are handed to a queue, and a writer thread
formats and writes them every 0.1 s in one write: a slow or blocked log pipe never stalls the
event loop, and the request path pays for the record, not for its JSON, the write or a wake-up.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from logging.handlers import QueueHandler
from typing import IO, Any

import orjson

from serving.settings import Settings

# The request being handled by the current task (Starlette runs each request in its own context).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
ACCESS = logging.getLogger("ranker.serving.access")
# What a LogRecord has of its own; anything else on a record came through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", ...extra fields, "exc"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                doc[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


class RequestContext(logging.Filter):
    """Stamps the current request's id on records logged while it is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):  # an explicit one (even None) wins
            record.request_id = REQUEST_ID.get()
        return True


class _QueueHandler(QueueHandler):
    """Hands the record to the listener with its message and traceback already rendered (the
    traceback's frames must not outlive the request), and keeps the `extra` fields apart (the
    stdlib's prepare() folds everything into the message text). The record is changed in place
    rather than copied: this handler is the root's only one (`configured`), and the rendered
    message and traceback text are what any other formatter would print anyway."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


class _Writer:
    """Formats and writes the queued records every `interval` seconds, in one write: a line
    costs the thread that logs it a record and a queue append, and no thread is woken per line
    (a wake-up per request measured more than the line itself on a loaded 2-core machine)."""

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord],
        formatter: logging.Formatter,
        stream: IO[str],
        interval: float,
    ) -> None:
        self.records = records
        self.formatter = formatter
        self.stream = stream
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ranker-log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self._stop.set()
        self._thread.join()
        self.drain()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.drain()

    def drain(self) -> None:
        lines = []
        while True:
            try:
                lines.append(self.formatter.format(self.records.get_nowait()) + "\n")
            except queue.Empty:
                break
        if lines:
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nowhere left to say it
                pass


@contextmanager
def configured(
    settings: Settings, stream: IO[str] | None = None, interval: float = 0.1
) -> Iterator[None]:
    """Route every logger (uvicorn's too) through one queue to `stream` (stderr) in
    RANKER_LOG_FORMAT, written every `interval` seconds, until the block ends; the root
    logger's previous setup is restored."""
    formatter = (
        JsonFormatter()
        if settings.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
    )
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = _QueueHandler(records)
    handler.addFilter(RequestContext())
    writer = _Writer(records, formatter, stream if stream is not None else sys.stderr, interval)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    writer.start()
    try:
        yield
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        writer.stop()  # writes what is queued


def access(
    status: int,
    seconds: float,
    *,
    request_id: str | None,
    model_version: str | None = None,
    variant: str | None = None,
    candidates: int | None = None,
    error_field: str | None = None,
) -> None:
    """The access line of one /rank request (INFO; WARNING for 5xx). Built and handed over
    directly: Logger.log would also walk the stack to find the caller, which nobody reads here."""
    level = logging.WARNING if status >= 500 else logging.INFO
    if not ACCESS.isEnabledFor(level):
        return
    record = ACCESS.makeRecord(
        ACCESS.name,
        level,
        __file__,
        0,
        "POST /rank %d",
        (status,),
        None,
        extra={
            "request_id": request_id,
            "model_version": model_version,
            "variant": variant,
            "status": status,
            "duration_ms": round(seconds * 1e3, 3),
            "candidates": candidates,
            "error_field": error_field,
        },
    )
    ACCESS.handle(record)
