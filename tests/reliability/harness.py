"""Helpers for the fault and soak tests: bounded /rank load, Prometheus text, registry faults,
a restartable redis-server, a tiny filesystem, process RSS."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from ranker.registry import MANIFEST_FILE, MODEL_FILE, TMP_PREFIX, latest_version, load_manifest
from tests.serving.conftest import free_port

OUT = Path(os.environ.get("RANKER_RELIABILITY_OUT", "out/reliability"))


def record(name: str, doc: dict[str, Any]) -> None:
    """Keep a run's numbers (out/reliability/<name>.json) for docs/reliability.md."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


# -- metrics -------------------------------------------------------------------------------------
def metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample in Prometheus text (`labels` as rendered, e.g. `outcome="failed"`)."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


# -- load ----------------------------------------------------------------------------------------
@dataclass
class Load:
    """What a load run saw: statuses, transport errors and the model versions that answered."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    @property
    def ok(self) -> int:
        return self.statuses[200]

    @property
    def failed(self) -> int:
        return self.sent - self.ok

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(ordered[int(q * (len(ordered) - 1))] * 1000, 2) if ordered else None

        return {
            "requests": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors[:5],
            "versions": dict(self.versions),
            "seconds": round(self.seconds, 2),
            "rps": round(self.sent / self.seconds, 1) if self.seconds else None,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
        }

    def note(self, response: httpx.Response | None, seconds: float, error: str = "") -> None:
        """Count one request (thread-safe): a response, or `error` when none came back."""
        version = (
            response.json()["model_version"] if response and response.status_code == 200 else None
        )
        with self.lock:
            if response is None:
                self.errors.append(error)
                return
            self.statuses[response.status_code] += 1
            self.latencies.append(seconds)
            if version is not None:
                self.versions[version] += 1
            elif len(self.errors) < 20:
                self.errors.append(f"{response.status_code}: {response.text[:300]}")


@contextlib.asynccontextmanager
async def rank_load(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    *,
    workers: int = 3,
    max_requests: int = 20_000,
    max_seconds: float = 120.0,
) -> AsyncIterator[Load]:
    """/rank from `workers` tasks until the block ends (or a request or time cap is hit)."""
    load = Load()
    stop = asyncio.Event()

    async def worker(w: int) -> None:
        i = 0
        while not stop.is_set() and load.sent < max_requests:
            if time.monotonic() - load.started > max_seconds:
                break
            started = time.perf_counter()
            try:
                response = await client.post("/rank", json={**body, "request_id": f"w{w}-{i}"})
                load.note(response, time.perf_counter() - started)
            except Exception as exc:  # any transport or app error is a lost request
                load.note(None, 0.0, f"{type(exc).__name__}: {exc}")
            i += 1
            await asyncio.sleep(0.002)  # leave the loop to the fault-injecting code too

    tasks = [asyncio.create_task(worker(w)) for w in range(workers)]
    try:
        yield load
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        load.seconds = time.monotonic() - load.started


async def grows(load: Load, by: int, timeout: float = 30.0) -> None:
    """Wait until `by` more requests were answered 200 (the service kept serving meanwhile)."""
    target = load.ok + by
    deadline = time.monotonic() + timeout
    while load.ok < target:
        if time.monotonic() > deadline:
            pytest.fail(f"load stalled: {load.summary()}")
        await asyncio.sleep(0.05)


# -- registry faults -----------------------------------------------------------------------------
def publish_raw(
    registry: Path, model: bytes, *, sha256: str | None = None, name: str = "ranker"
) -> str:
    """Publish `model` as the next version with the newest version's manifest, atomically (temp
    directory, then rename), like ranker.registry.publish; `sha256` overrides the true hash."""
    folder = registry / name
    newest = latest_version(registry, name)
    assert newest is not None
    doc = load_manifest(folder / newest).to_dict()
    version = f"v{int(newest[1:]) + 1:04d}"
    doc.update(version=version, parent=newest, sha256=sha256 or hashlib.sha256(model).hexdigest())
    tmp = folder / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp.mkdir()
    (tmp / MODEL_FILE).write_bytes(model)
    (tmp / MANIFEST_FILE).write_text(json.dumps(doc, indent=2))
    tmp.rename(folder / version)
    return version


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file and directory under `root` (hidden ones too) -> sha256 or 'dir'."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel in skip:
            continue
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# -- redis ---------------------------------------------------------------------------------------
class RestartableRedis:
    """A test-owned redis-server on a free loopback port, persisted with an fsync'ed append-only
    file so a SIGKILL loses nothing acknowledged; `kill` and `start` again on the same port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; the Redis fault test needs it")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.kill()
                    pytest.fail(f"redis-server on port {self.port} did not start")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)


# -- a tiny filesystem -----------------------------------------------------------------------------
@contextlib.contextmanager
def tiny_filesystem(path: Path, size_kib: int) -> Iterator[bool]:
    """A size-limited tmpfs mounted at `path` (needs root); yields False where mounting is not
    possible, leaving `path` an ordinary directory."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(path)]
        mounted = subprocess.run(command, capture_output=True, timeout=10).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            done = subprocess.run(["umount", str(path)], capture_output=True, timeout=10)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def fill(path: Path) -> int:
    """Write `path` until the filesystem refuses (ENOSPC); returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            written += os.write(fd, b"\0" * 4096)
    except OSError:
        return written
    finally:
        os.close(fd)


# -- processes -----------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
