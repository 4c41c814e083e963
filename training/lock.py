"""One retraining run at a time: a lock held in Redis or in a lock file.

Redis: `SET key value NX PX ttl`, released and extended by Lua scripts that compare the value first,
so a run whose lock expired never deletes or extends the next holder's. File: created with
O_CREAT | O_EXCL holding {token, pid, host, since}; it is stale once older than the ttl, or at once
when its pid is dead on this host (a killed run). While a lock is held a daemon thread extends it
every ttl / 3; `check()` raises when it was lost (e.g. the process was paused past the ttl), so a run
that no longer owns the lock does not publish.
"""

from __future__ import annotations

import contextlib
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

import redis

log = logging.getLogger("ranker.retrain")

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


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
        except (redis.RedisError, OSError) as exc:  # it expires after the ttl anyway
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
        self._release_script = self.client.register_script(_RELEASE)
        self._extend_script = self.client.register_script(_EXTEND)

    def _try_acquire(self) -> str | None:
        for _ in range(3):  # the holder's key may expire between SET and GET
            if self.client.set(self.key, self.value, nx=True, px=int(self.ttl_s * 1000)):
                return None
            raw = self.client.get(self.key)
            if raw is not None:
                return _holder(raw)
        return "a run that keeps replacing it"

    def _extend(self) -> bool:
        return bool(self._extend_script(keys=[self.key], args=[self.value, int(self.ttl_s * 1000)]))

    def _release(self) -> None:
        try:
            self._release_script(keys=[self.key], args=[self.value])
        finally:
            self.client.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class FileLock(RunLock):
    def __init__(self, path: str | Path, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self.path = Path(path)
        self.description = f"lock file {self.path}"

    def _read(self) -> tuple[bytes, float] | None:
        try:
            return self.path.read_bytes(), self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def _stale(self, raw: bytes, mtime: float) -> bool:
        if time.time() - mtime > self.ttl_s:
            return True
        try:
            doc = json.loads(raw)
            same_host = doc["host"] == socket.gethostname()
            return same_host and not _pid_alive(int(doc["pid"]))
        except (ValueError, KeyError, TypeError):
            return False  # being written right now, or foreign: only the age decides

    def _try_acquire(self) -> str | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                found = self._read()
                if found is None:
                    continue  # released meanwhile
                raw, mtime = found
                if not self._stale(raw, mtime):
                    return _holder(raw)
                log.warning("breaking stale %s (%s)", self.description, _holder(raw))
                if not self._break(raw):
                    return _holder(raw)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(self.value)
                handle.flush()
                os.fsync(handle.fileno())
            return None
        return "a run that keeps replacing it"

    def _break(self, stale: bytes) -> bool:
        """Move the stale file aside; if another process replaced it meanwhile, put it back."""
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True
        try:
            if aside.read_bytes() == stale:
                return True
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)  # atomic: only if nobody created a new lock since
            return False
        finally:
            aside.unlink(missing_ok=True)

    def _ours(self) -> bool:
        found = self._read()
        return found is not None and found[0] == self.value.encode()

    def _extend(self) -> bool:
        if not self._ours():
            return False
        os.utime(self.path)
        return True

    def _release(self) -> None:
        if self._ours():
            self.path.unlink(missing_ok=True)
