"""Serving fixtures: a real registry (tiny model trained and exported once per session), the real
ASGI app with its lifespan, real ONNX Runtime, and real Redis at 127.0.0.1:6379.

Tests that need Redis fail (never skip) when it does not answer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from ranker.registry import MODEL_FILE, Publication, load_manifest, publish
from serving.app import create_app
from serving.service import Service
from serving.settings import Settings
from tests.conftest import REDIS_URL

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# A 50/50 layer `weights` (control | watch_heavy); the packaged default has experiments off.
AB_FILE = Path(__file__).parents[1] / "fixtures" / "experiments_ab.yaml"
USER_FEATURES = (
    "user_id",
    "user_active_degree",
    "device",
    "follower_bucket",
    "user_code_0",
    "user_code_1",
    "user_code_2",
)
CONTEXT_FEATURES = ("hour", "tab")
ITEM_FEATURES = ("item_id", "author_id", "category", "tags", "duration", "upload_age_days")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Built:
    """The session's training run and registry (read-only: tests copy it before changing it)."""

    log: Path
    run_dir: Path
    registry: Path


@pytest.fixture(scope="session")
def built(
    tiny_log: Path, tiny_run: Path, tiny_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Built:
    """The shared tiny run's registry plus v0002: the same graph, another version to swap to."""
    registry = tmp_path_factory.mktemp("serving") / "models"
    shutil.copytree(tiny_registry, registry)
    republish(registry, "v0001")
    return Built(tiny_log, tiny_run, registry)


def republish(registry: Path, version: str, name: str = "ranker") -> str:
    """Publish a copy of an existing version as the next one; returns the new version."""
    manifest = load_manifest(registry / name / version)
    doc = manifest.to_dict()
    keep = {"feature_spec", "tasks", "inputs", "outputs", "opset", "data_window", "metrics"}
    keep |= {"model_kind", "hparams", "exporter"}
    new = publish(
        registry,
        name,
        registry / name / version / MODEL_FILE,
        Publication(parent=version, **{k: doc[k] for k in keep}),
    )
    return new.version


@pytest.fixture
def registry(built: Built, tmp_path: Path) -> Path:
    """A private copy of the registry that a test may change (tamper, publish)."""
    target = tmp_path / "models"
    shutil.copytree(built.registry, target)
    return target


@pytest.fixture(scope="session")
def log_rows(built: Built) -> list[dict[str, Any]]:
    files = sorted(built.log.glob("*/*.parquet"))
    return pq.read_table(files).to_pylist()


def requests_of(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    by_request: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_request.setdefault(row["request_id"], []).append(row)
    return by_request


def body_of(rows: list[dict[str, Any]], request_id: str = "r-1", **extra: Any) -> dict[str, Any]:
    """A /rank body from impression rows of one request (user and context from the first row)."""
    first = rows[0]
    seen: set[Any] = set()
    candidates = []
    for row in rows:
        if row["item_id"] in seen:
            continue
        seen.add(row["item_id"])
        candidates.append({k: row[k] for k in ITEM_FEATURES})
    return {
        "request_id": request_id,
        "user": {k: first[k] for k in USER_FEATURES},
        "context": {k: first[k] for k in CONTEXT_FEATURES},
        "candidates": candidates,
        **extra,
    }


@pytest.fixture
def body(log_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A valid body of 12 candidates."""
    rows = [r for r in log_rows if r["request_id"] == log_rows[0]["request_id"]]
    items = {r["item_id"]: r for r in log_rows}
    extra = [r for i, r in items.items() if i not in {x["item_id"] for x in rows}]
    return body_of((rows + extra)[:12])


@pytest.fixture
def settings(registry: Path, tmp_path: Path) -> Settings:
    """File store on a writable copy of the A/B test config; JSONL impressions; fast polling."""
    experiments = tmp_path / "experiments.yaml"
    shutil.copy(AB_FILE, experiments)
    return Settings(
        registry=registry,
        experiments_file=experiments,
        admin_token=TOKEN,
        impression_log=tmp_path / "impressions.jsonl",
        warmup_counts=(1, 20),
        poll_interval_s=0.2,
        redis_timeout_s=0.5,
        intra_op_threads=1,
        freeze_gc=False,  # the test process's heap is not a server's
        gc_threshold=0,
    )


@dataclass
class Served:
    app: Any
    client: httpx.AsyncClient

    @property
    def service(self) -> Service:
        return self.app.state.service  # type: ignore[no-any-return]


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Served]:
    """The real app with its lifespan (start-up loads and warms models), over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ranker") as client:
            yield Served(app, client)


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll an (async or sync) predicate until true; fail with a clear message on timeout."""
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels` in a /metrics scrape, parsed
    by prometheus_client (label order and number formatting are the library's); None if absent."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) <= 1, f"{name}{labels}: {len(found)} samples"
    return float(found[0]) if found else None


# -- Redis ---------------------------------------------------------------------------------------
@pytest.fixture
def redis_settings(settings: Settings, redis_prefix: str) -> Settings:
    return replace(settings, redis_url=REDIS_URL, redis_prefix=redis_prefix)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OwnRedis:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server owned by the test, on a free port, that the test may stop."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; the Redis-outage test needs it")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = OwnRedis(process, port)
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or process.poll() is not None:
                server.stop()
                pytest.fail(f"test-owned redis-server on port {port} did not start")
            time.sleep(0.05)
    client.close()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def server_process(
    settings: Settings, tmp_path: Path, wait_for_path: str = "/readyz", **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m serving.server` configured through RANKER_* variables (the settings' registry,
    experiments file and impression log, plus `env`), on 127.0.0.1 until SIGTERM on exit; yields
    once `wait_for_path` answers 200 (`/livez` for a server that is up but not ready)."""
    port = free_port()
    variables = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RANKER_")},
        "RANKER_REGISTRY": str(settings.registry),
        "RANKER_EXPERIMENTS_FILE": str(settings.experiments_file),
        "RANKER_IMPRESSION_LOG": str(settings.impression_log),
        "RANKER_ADMIN_TOKEN": TOKEN,
        "RANKER_PORT": str(port),
        "RANKER_INTRA_OP_THREADS": "1",
        "RANKER_LOG_LEVEL": "warning",
        **env,
    }
    output = tmp_path / "server.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.server"], env=variables, stdout=sink, stderr=sink
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}{wait_for_path}", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not become ready:\n{output.read_text()}")
            time.sleep(0.1)
        yield base, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
