"""`ranker simulate-traffic` against the real service (uvicorn on 127.0.0.1 in a thread, real ONNX
Runtime, JSONL impression log), then `ranker ab-report` over what it logged."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import uvicorn

from cli.main import main
from ranker.schema import load_default_spec
from serving.app import create_app
from serving.settings import Settings
from sim.traffic import (
    TrafficConfig,
    TrafficError,
    check_loopback,
    examination,
    run_traffic,
    sample_requests,
)
from sim.world import World
from tests.serving.conftest import AB_FILE, free_port
from tests.training.conftest import TINY
from training.data import read_log

# The world of the `tiny_log` the model was trained on, as `simulate-traffic` flags.
WORLD_ARGS = ["--users", str(TINY.users), "--items", str(TINY.items), "--authors",
              str(TINY.authors), "--days", str(TINY.days), "--requests-per-day",
              str(TINY.requests_per_day)]  # fmt: skip


@dataclass
class Running:
    url: str
    impressions: Path
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Shut down (the lifespan drains the impression writer) and wait for it."""
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "service did not stop"


@pytest.fixture
def service(tiny_model: Path, tmp_path: Path) -> Iterator[Running]:
    experiments = tmp_path / "experiments.yaml"
    shutil.copy(AB_FILE, experiments)
    settings = Settings(
        registry=tiny_model.parent.parent,
        experiments_file=experiments,
        impression_log=tmp_path / "impressions.jsonl",
        warmup_counts=(1, 10),
        intra_op_threads=1,
        freeze_gc=False,  # the test process's heap is not a server's
        gc_threshold=0,
    )
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, ws="none",
                            log_level="warning", lifespan="on")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-service", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "service did not start"
        time.sleep(0.05)
    assert settings.impression_log is not None
    running = Running(f"http://127.0.0.1:{port}", settings.impression_log, server, thread)
    try:
        yield running
    finally:
        running.stop()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_closed_loop_outcomes_join_the_impression_log(service: Running, tmp_path: Path) -> None:
    out, log_dir = tmp_path / "traffic", tmp_path / "log"
    args = ["simulate-traffic", "--url", service.url, "--out", str(out), "--requests", "50",
            "--concurrency", "4", "--log-dir", str(log_dir), *WORLD_ARGS]  # fmt: skip
    assert main(args) == 0
    service.stop()  # flushes the impression log
    records = read_jsonl(service.impressions)
    outcomes = read_jsonl(out / "outcomes.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sent"] == summary["served"] == len(records) == 50 and summary["failed"] == 0
    assert summary["latency_p99_ms"] >= summary["latency_p50_ms"] > 0
    # Every served item has exactly one outcome, at its served position, and nothing else does.
    served = {(r["request_id"], str(i)): (p, r["variant"]) for r in records
              for p, i in enumerate(r["item_ids"])}  # fmt: skip
    keys = {(o["request_id"], str(o["item_id"])): (o["position"], o["variant"]) for o in outcomes}
    assert keys == served and len(outcomes) == len(served) == summary["impressions"]
    clicks = np.array([o["click"] for o in outcomes])
    watch = np.array([o["watch_time"] for o in outcomes])
    assert set(clicks) <= {0, 1} and ((watch > 0) == (clicks == 1)).all()
    day_ms = World(TINY).start_ms + TINY.days * 86_400_000  # the day after the logged days
    assert all(day_ms <= o["ts"] < day_ms + 86_400_000 for o in outcomes)
    # The Parquet rows are a valid log of the new day, and they agree with the outcomes.
    log = read_log(log_dir, load_default_spec())
    assert log.days() == ["2026-01-05"] and log.rows == len(outcomes) and log.has_oracle
    table = pq.read_table(next(log_dir.glob("day=2026-01-05/part-traffic-0.parquet")))
    assert table["click"].to_numpy().sum() == clicks.sum()
    # ab-report over the run: both arms of the test config's 50/50 layer, every row joined.
    report_dir = tmp_path / "report"
    assert main(["ab-report", "--impressions", str(service.impressions), "--outcomes",
                 str(out / "outcomes.jsonl"), "--out", str(report_dir), "--experiments",
                 str(AB_FILE)]) == 0  # fmt: skip
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["variants"]) == {"control", "watch_heavy"} and report["layer"] == "weights"
    assert report["join"]["matched"] == len(outcomes)
    assert report["join"]["impressions_without_outcome"] == 0
    assert report["join"]["variant_label_mismatches"] == 0
    assert set(report["lift"]) == {"watch_heavy"} and (report_dir / "lift.png").stat().st_size


def test_stops_at_the_time_limit(service: Running, tmp_path: Path) -> None:
    config = TrafficConfig(service.url, tmp_path, requests=5000, seconds=0.5, concurrency=2)
    started = time.monotonic()
    summary = run_traffic(World(TINY), config)
    assert time.monotonic() - started < 10
    assert 0 < summary.sent < 5000 and summary.failed == 0


def test_outcomes_do_not_depend_on_concurrency(service: Running, tmp_path: Path) -> None:
    for concurrency in (1, 6):
        config = TrafficConfig(service.url, tmp_path / str(concurrency), requests=30,
                               concurrency=concurrency)  # fmt: skip
        assert run_traffic(World(TINY), config).served == 30
    assert (tmp_path / "1" / "outcomes.jsonl").read_bytes() == (
        tmp_path / "6" / "outcomes.jsonl"
    ).read_bytes()


def test_top_k_cuts_what_is_served(service: Running, tmp_path: Path) -> None:
    config = TrafficConfig(service.url, tmp_path, requests=3, concurrency=1, top_k=2)
    summary = run_traffic(World(TINY), config)
    assert summary.served == 3 and summary.impressions == 6  # top_k cuts what was served
    assert max(o["position"] for o in read_jsonl(tmp_path / "outcomes.jsonl")) == 1


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1:8000", "http://example.com", "http://127.0.0.1@example.com/",
     "http://[::ffff:127.0.0.1]:80", "http://2130706433/", "ftp://127.0.0.1/", "127.0.0.1:8000"],
)  # fmt: skip
def test_refuses_hosts_that_are_not_loopback(url: str) -> None:
    with pytest.raises(TrafficError, match=r"loopback|scheme"):
        check_loopback(url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://127.9.9.9", "http://[::1]:8000", "http://localhost:1"]
)
def test_accepts_loopback_hosts(url: str) -> None:
    assert check_loopback(url) == url


def test_cli_refuses_before_sending(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["simulate-traffic", "--url", "http://192.168.1.10:8000", "--out", str(tmp_path)]) == 2
    )
    assert "is not loopback" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_hanging_service_is_bounded_by_timeouts(tmp_path: Path) -> None:
    """A server that answers /readyz and never answers /rank: the run still ends on time."""
    port = free_port()
    ready = threading.Event()
    loop: asyncio.AbstractEventLoop | None = None
    done: asyncio.Event | None = None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert done is not None
        try:
            if (await reader.readline()).startswith(b"GET /readyz"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
            await done.wait()  # a /rank is never answered
        finally:
            writer.close()

    async def serve() -> None:
        nonlocal loop, done
        loop, done = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        async with server:
            await done.wait()
        await asyncio.sleep(0.1)  # let the handlers close their connections

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        config = TrafficConfig(f"http://127.0.0.1:{port}", tmp_path, requests=100, seconds=1.0,
                               concurrency=2, timeout_s=0.3, ready_timeout_s=5)  # fmt: skip
        started = time.monotonic()
        summary = run_traffic(World(TINY), config)
        assert time.monotonic() - started < 1.0 + 0.3 + 2.0
        assert summary.served == 0 and summary.failed == summary.sent > 0
        assert list(summary.errors) == ["no answer within 0.3 s"]
    finally:
        assert loop is not None and done is not None
        loop.call_soon_threadsafe(done.set)
        thread.join(10)


def test_position_effect_and_request_ids() -> None:
    assert examination(np.arange(3), 1.0) == pytest.approx([1.0, 1 / np.log2(3), 0.5])
    assert (examination(np.arange(50), 0.0) == 1.0).all()
    assert (np.diff(examination(np.arange(50), 1.0)) < 0).all()
    world = World(TINY)
    longer = list(sample_requests(world, TINY.days, 0, 1200))  # spans chunks
    ids = [r.request_id for r in longer]
    assert len(set(ids)) == 1200 and min(ids) >= TINY.days * TINY.requests_per_day  # not simulated
    for short, long in zip(sample_requests(world, TINY.days, 0, 20), longer, strict=False):
        assert short.request_id == long.request_id and (short.candidates == long.candidates).all()
    assert all(len(np.unique(r.candidates)) == len(r.candidates) for r in longer)
    other = {r.request_id for r in sample_requests(world, TINY.days, 1, 1200)}
    assert not other & set(ids)


def test_config_bounds() -> None:
    for bad in ({"requests": 0}, {"requests": 10**7}, {"seconds": 0}, {"seconds": 1e9},
                {"concurrency": 0}, {"top_k": 0}, {"seed": -1}):  # fmt: skip
        with pytest.raises(ValueError):
            TrafficConfig("http://127.0.0.1:1", Path("x"), **bad)  # type: ignore[arg-type]
