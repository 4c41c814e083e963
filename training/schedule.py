"""`ranker retrain --schedule CRON`: run a job at each fire time of a cron expression (UTC).

Expressions are parsed by croniter: 5 fields (minute hour day month weekday), or 6 with seconds
last. A failed run is logged and counted and the loop goes on. SIGINT/SIGTERM while waiting stops
at once; during a run it stops after that run (a second signal aborts the run: it is atomic, so
the registry and the experiment config stay as they were). Fire times missed while a run was going
are skipped, not caught up.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import FrameType

from croniter import croniter

from training.config import ConfigError
from training.exit_codes import EXIT_LOCKED

log = logging.getLogger("ranker.retrain")

# One run; returns its exit code (EXIT_LOCKED: another run held the lock, a skip, not a failure).
Job = Callable[[], int]


def parse_schedule(expression: str) -> str:
    """The expression, checked; ConfigError with a readable message if croniter refuses it."""
    if not croniter.is_valid(expression):
        raise ConfigError(
            f"--schedule {expression!r}: not a valid cron expression; use 5 fields "
            "(minute hour day-of-month month day-of-week, e.g. '0 3 * * *') or 6 with seconds "
            "last (e.g. '*/30 * * * * *')"
        )
    return expression


@contextlib.contextmanager
def signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """Install `handler` for SIGINT and SIGTERM (main thread only), restoring the old ones."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupt_on_signals() -> contextlib.AbstractContextManager[None]:
    """SIGTERM behaves like Ctrl-C, so a terminated run releases its lock and writes its report."""
    return signals(_interrupt)


def run_schedule(expression: str, job: Job, max_runs: int | None = None) -> int:
    """Run `job` at each fire time until a signal (or `max_runs` runs). Returns 0 when no run
    failed, else 1. A job's exit code 4 (locked by another run) counts as skipped."""
    stop = threading.Event()
    running = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and running.is_set():
            raise KeyboardInterrupt(signal.Signals(signum).name)
        stop.set()
        if running.is_set():
            log.warning("stopping after the current run (signal again to abort it)")

    runs = failures = skipped = 0
    last = datetime.now(UTC)
    with signals(on_signal):
        while not stop.is_set() and (max_runs is None or runs < max_runs):
            now = datetime.now(UTC)
            fire = croniter(expression, max(now, last)).get_next(datetime)
            log.info("next retraining run at %s", fire.strftime("%Y-%m-%d %H:%M:%S UTC"))
            if stop.wait(max(0.0, (fire - now).total_seconds())):
                break
            last = fire
            runs += 1
            running.set()
            started = time.perf_counter()
            try:
                code = job()
            except Exception:
                log.exception("retraining run %d failed", runs)
                code = 1
            finally:
                running.clear()
            if code == EXIT_LOCKED:
                skipped += 1
            elif code != 0:
                failures += 1
            log.info(
                "run %d ended with exit code %d after %.1f s (%d runs, %d failed, %d skipped)",
                runs,
                code,
                time.perf_counter() - started,
                runs,
                failures,
                skipped,
            )
    log.info("scheduler stopped: %d runs, %d failed, %d skipped", runs, failures, skipped)
    return 0 if failures == 0 else 1
