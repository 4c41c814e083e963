"""One retraining run at a time: a lock held in Redis (`redis.lock.Lock`) or on a file (`filelock`).

Redis: redis-py's lock, whose token is this run's {token, pid, host, since}, so a refused run can
say who holds it; its Lua scripts compare the token before they extend or delete, so a run whose
lock expired never touches the next holder's. File: filelock's OS lock (flock), which the kernel
drops the moment its process dies, so a killed run never leaves a stale lock; the holder's
description is written into the locked file. While a lock is held a daemon thread renews it
every ttl / 3 (Redis: the ttl; file: that the path still names the file we locked), and `check()`
raises when it was lost (the process was paused past the ttl, or the lock file was replaced), so
a run that no longer owns the lock does not publish.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock
import redis
import redis.lock

log = logging.getLogger("ranker.retrain")


class LockedError(RuntimeError):
    """Another run holds the lock."""


class LockLostError(RuntimeError):
    """The lock expired or was taken over while this run held it."""


def _holder(raw: Any) -> str:
    """A readable description of a lock's value."""
    try:
        doc = json.loads(raw)
        return f"pid {doc['pid']} on {doc['host']} since {doc['since']}"
    except (TypeError, ValueError, KeyError):
        return "an unknown holder"


class RunLock:
    """Acquire / release / check plus the keep-alive thread; subclasses store the lock."""

    description = "lock"

    def __init__(self, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lock ttl must be > 0 seconds, got {ttl_s}")
        self.ttl_s = ttl_s
        self.value = json.dumps(
            {
                "token": uuid.uuid4().hex,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    # -- storage, per backend ---------------------------------------------------------------
    def _try_acquire(self) -> str | None:
        """None when acquired, else a description of the holder."""
        raise NotImplementedError

    def _extend(self) -> bool:
        """Renew the ttl; False when the lock is no longer ours."""
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    # -- protocol ---------------------------------------------------------------------------
    def acquire(self) -> None:
        holder = self._try_acquire()
        if holder is not None:
            raise LockedError(
                f"another retraining run holds {self.description} ({holder}); try again later"
            )
        self._thread = threading.Thread(target=self._keep_alive, name="retrain-lock", daemon=True)
        self._thread.start()

    def _keep_alive(self) -> None:
        confirmed = time.monotonic()
        while not self._stop.wait(self.ttl_s / 3):
            try:
                ok = self._extend()
            except (redis.RedisError, OSError) as exc:
                # A short outage is survivable; past the ttl another run may have taken over.
                log.warning("cannot extend %s: %s", self.description, exc)
                ok = time.monotonic() - confirmed < self.ttl_s
            else:
                confirmed = time.monotonic() if ok else confirmed
            if not ok:
                log.error("lost %s", self.description)
                self._lost.set()
                return

    def check(self) -> None:
        """Raise LockLostError unless this run still holds the lock."""
        if self._thread is None or self._lost.is_set():
            raise LockLostError(f"{self.description} is no longer held by this run")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self._release()
        except (redis.RedisError, OSError) as exc:  # it expires (or dies with us) anyway
            log.warning("cannot release %s: %s", self.description, exc)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RedisLock(RunLock):
    def __init__(self, url: str, key: str, ttl_s: float, timeout: float = 2.0) -> None:
        super().__init__(ttl_s)
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.key = key
        self.description = f"Redis lock {key}"
        # thread_local=False: the keep-alive thread extends the token the main thread acquired.
        self._lock = redis.lock.Lock(
            self.client, key, timeout=ttl_s, blocking=False, thread_local=False
        )

    def _try_acquire(self) -> str | None:
        if self._lock.acquire(token=self.value):
            return None
        raw = self.client.get(self.key)
        return _holder(raw) if raw is not None else "a run that released it just now"

    def _extend(self) -> bool:
        try:
            return self._lock.extend(self.ttl_s, replace_ttl=True)
        except redis.lock.LockNotOwnedError:  # expired, or another run's token now
            return False

    def _release(self) -> None:
        try:
            self._lock.release()
        except redis.lock.LockNotOwnedError:
            pass  # expired or taken over: the next holder's lock is left alone
        finally:
            self.client.close()


class FileLock(RunLock):
    """An OS lock on `path` (never stale: the kernel releases it with its process). `ttl_s` only
    sets how often the keep-alive thread checks that the path still names the locked file."""

    def __init__(self, path: str | Path, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self.path = Path(path)
        self.description = f"lock file {self.path}"
        self._locked: tuple[int, int] | None = None  # (device, inode) of the file we locked
        self._lock = filelock.FileLock(
            self.path, timeout=0, thread_local=False, on_acquired=self._stamp
        )

    def _stamp(self, fd: int) -> None:
        """Runs with the lock just taken: say who holds it, remember which file is locked."""
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.value.encode(), 0)
        os.fsync(fd)
        info = os.fstat(fd)
        self._locked = (info.st_dev, info.st_ino)

    def _try_acquire(self) -> str | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            try:
                return _holder(self.path.read_bytes())
            except OSError:
                return "an unknown holder"
        return None

    def _extend(self) -> bool:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return False  # removed: a new file there would be lockable by another run
        return (info.st_dev, info.st_ino) == self._locked

    def _release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()
