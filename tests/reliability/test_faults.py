"""Faults under load: each keeps /rank answering 200 on the last good state, shows the fault in
/readyz and /metrics, and loses nothing already written.

The service is the real app in-process (lifespan, ONNX Runtime, store watcher and impression
writer threads); the load is a few asyncio tasks posting /rank while the fault is injected from
worker threads, bounded in requests and seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
import yaml

from ranker.registry import MODEL_FILE
from serving.settings import Settings
from serving.state import StateManager
from tests.reliability.harness import (
    RestartableRedis,
    fill,
    grows,
    metric,
    publish_raw,
    rank_load,
    record,
    tiny_filesystem,
    tree,
)
from tests.serving.conftest import AUTH, Built, serve, wait_for
from training.retrain.lock import FileLock

pytestmark = pytest.mark.anyio


def config_version(manager: StateManager) -> int:
    assert manager.state is not None
    return manager.state.config.version


def served_models(manager: StateManager) -> set[str]:
    state = manager.state
    return {str(ref) for ref in state.models} if state is not None else set()


def stream_records(client: redis.Redis, stream: str) -> set[bytes]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream))
    return {fields[b"record"] for _, fields in entries}


async def scrape(served: Any) -> tuple[dict[str, Any], str]:
    ready = await served.client.get("/readyz")
    assert ready.status_code == 200, ready.text  # still ready: the last good state serves
    return ready.json(), (await served.client.get("/metrics")).text


# -- (a) Redis killed and restarted ----------------------------------------------------------------
async def test_redis_killed_and_restarted_under_load(
    settings: Settings, body: dict[str, Any], tmp_path: Path
) -> None:
    server = RestartableRedis(tmp_path)
    server.start()
    settings = replace(
        settings,
        redis_url=server.url,
        redis_prefix="reliability",
        poll_interval_s=0.2,
        redis_timeout_s=0.3,
    )
    stream = settings.impressions_stream
    try:
        async with serve(settings) as served:
            service = served.service
            manager = service.manager
            version = config_version(manager)
            async with rank_load(served.client, body, max_seconds=90) as load:
                await grows(load, 30)
                await wait_for(lambda: service.impressions.written >= 30, timeout=10)
                client = server.client()
                before = stream_records(client, stream)
                client.close()

                await asyncio.to_thread(server.kill)
                await wait_for(lambda: not manager.status.ok, timeout=10)
                down_from = load.ok
                await grows(load, 300)  # ranking goes on without the store
                ready, metrics = await scrape(served)
                assert ready["store"]["ok"] is False and ready["store"]["error"]
                assert ready["config"]["version"] == version and ready["store"]["config_age_s"] > 0
                assert metric(metrics, "ranker_store_up") == 0
                assert (metric(metrics, "ranker_config_age_seconds") or 0) > 0
                assert (metric(metrics, "ranker_store_errors_total") or 0) >= 1
                await wait_for(lambda: service.impressions.failed > 0, timeout=15)
                metrics = (await served.client.get("/metrics")).text
                assert (metric(metrics, "ranker_impressions_total", 'outcome="failed"') or 0) > 0
                down = load.ok - down_from

                await asyncio.to_thread(server.start)
                await wait_for(lambda: manager.status.ok, timeout=15)
                errors = manager.status.errors
                written = service.impressions.written
                await grows(load, 30)
                await wait_for(lambda: service.impressions.written > written, timeout=15)
            # A pooled connection from before the restart fails once when next used (redis-py
            # retries nothing by default), so the store may read "down" once more: wait it out.
            await wait_for(lambda: manager.status.ok, timeout=15)
            flaps = manager.status.errors - errors
            ready, metrics = await scrape(served)
            assert ready["store"]["ok"] is True and ready["store"]["error"] is None
            assert metric(metrics, "ranker_store_up") == 1
            assert ready["config"]["version"] == version == config_version(manager)
            log = service.impressions
            # every answered request is accounted for: written, or counted as failed / dropped
            await wait_for(lambda: log.written + log.failed + log.dropped == load.ok, timeout=15)
        client = server.client()
        after = stream_records(client, stream)
        client.close()
    finally:
        server.kill()
    assert load.failed == 0, load.summary()
    assert before <= after  # what was in the stream before the crash survived it
    record(
        "fault_redis",
        {
            **load.summary(),
            "answered_while_down": down,
            "impressions": {"written": log.written, "failed": log.failed, "dropped": log.dropped},
            "stream_before_kill": len(before),
            "stream_after_restart": len(after),
            "store_errors_after_recovery": flaps,
        },
    )


# -- (b) corrupt, truncated and mis-hashed models --------------------------------------------------
async def test_bad_model_versions_are_refused_under_load(
    settings: Settings, body: dict[str, Any]
) -> None:
    registry = settings.registry
    good = (registry / "ranker" / "v0002" / MODEL_FILE).read_bytes()
    faults = {
        "corrupt": (b"\x08\x07garbage, not a protobuf" * 100, None, "ONNX Runtime cannot load"),
        "truncated": (good[: len(good) // 2], None, "ONNX Runtime cannot load"),
        "wrong sha256": (good, "0" * 64, "sha256 mismatch"),
    }
    refused: dict[str, str] = {}
    # The packaged config names version `latest`: a publish is a config change through the file
    # store, picked up by the watcher's poll.
    async with serve(replace(settings, poll_interval_s=0.1)) as served:
        manager = served.service.manager
        start = manager.state
        assert served_models(manager) == {"ranker/v0002"}
        async with rank_load(served.client, body, max_seconds=90) as load:
            await grows(load, 20)
            for name, (model, sha, message) in faults.items():
                version = await asyncio.to_thread(publish_raw, registry, model, sha256=sha)
                await wait_for(lambda v=version: v in (manager.status.rejected or ""), timeout=15)
                assert message in (manager.status.rejected or "")
                assert manager.state is start
                await grows(load, 10)
                ready, metrics = await scrape(served)
                assert (
                    version in ready["rejected"] and ready["models"][0]["model"] == "ranker/v0002"
                )
                assert metric(metrics, "ranker_config_rejected") == 1
                # ... and named explicitly by an admin, it is refused naming the field
                doc = {"salt": "s", "default": {"model": {"name": "ranker", "version": version}}}
                put = await served.client.put("/experiments", json=doc, headers=AUTH)
                assert put.status_code == 422, put.text
                assert put.json()["error"]["field"] == "default.model"
                assert message in put.json()["error"]["message"]
                reload = await served.client.post("/models/reload", headers=AUTH)
                assert reload.status_code == 503 and version in reload.text
                assert manager.state is start
                refused[name] = version
            # a good publish after them is served, and the fault clears
            fixed = await asyncio.to_thread(publish_raw, registry, good)
            await wait_for(lambda: f"ranker/{fixed}" in served_models(manager))
            await grows(load, 20)
        ready, metrics = await scrape(served)
        assert ready["rejected"] is None and metric(metrics, "ranker_config_rejected") == 0
    assert load.failed == 0, load.summary()
    assert set(load.versions) == {"ranker/v0002", f"ranker/{fixed}"}
    record("fault_models", {**load.summary(), "refused": refused, "then_served": fixed})


async def test_malformed_config_file_is_reported(settings: Settings, body: dict[str, Any]) -> None:
    async with serve(replace(settings, poll_interval_s=0.1)) as served:
        manager = served.service.manager
        start = manager.state
        path = Path(str(settings.experiments_file))
        doc = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**doc, "layers": 7}))
        await wait_for(lambda: manager.status.rejected is not None, timeout=1)
        assert "layers" in (manager.status.rejected or "") and manager.state is start
        assert (await served.client.post("/rank", json=body)).status_code == 200


# -- (c) a retrain killed half-way ------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]
RANKER = Path(sys.executable).with_name("ranker")


def retrain_config(settings: Settings, log: Path, root: Path) -> Path:
    """A retraining job on the service's own registry and experiments file (file store)."""
    doc = {
        "train": {
            "model": {
                "kind": "mmoe",
                "config": {
                    "num_experts": 3,
                    "expert_units": [16],
                    "tower_units": [8],
                    "embedding_dim": 4,
                },
            },
            "train": {"epochs": 2, "batch_size": 256, "max_steps_per_epoch": 4, "threads": 1},
        },
        "data": {"paths": [str(log)]},
        "window_days": 4,
        "registry": str(settings.registry),
        "model_name": "ranker",
        "experiments": {"file": str(settings.experiments_file)},
        "runs_dir": str(root / "runs"),
        "report_dir": str(root / "reports"),
    }
    path = root / "retrain.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def retrain(config: Path, *overrides: str) -> subprocess.Popen[bytes]:
    """`ranker retrain --config ...`, the public command, with no RANKER_* from this process."""
    assert RANKER.exists(), f"{RANKER}: the `ranker` console script is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    command = [str(RANKER), "retrain", "--config", str(config), *overrides]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def kill_when_training(process: subprocess.Popen[bytes], runs: Path, timeout: float) -> float:
    """SIGKILL once the first epoch's checkpoint exists; returns the seconds it took."""
    started = time.monotonic()
    try:
        while not any(runs.glob("*/checkpoint.pt")):
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"retrain ended before its first checkpoint:\n{output}")
            if time.monotonic() - started > timeout:
                pytest.fail("retrain did not reach its first checkpoint in time")
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        if process.stdout:
            process.stdout.close()
    return time.monotonic() - started


LOCK = ".retrain-ranker.lock"  # the retrain lock file; a killed run's hold dies with it


async def test_retrain_killed_half_way_changes_nothing(
    settings: Settings, built: Built, body: dict[str, Any], tmp_path: Path
) -> None:
    config = retrain_config(settings, built.log, tmp_path)
    experiments = Path(str(settings.experiments_file))
    registry_before, config_before = tree(settings.registry), experiments.read_bytes()
    async with serve(replace(settings, poll_interval_s=0.1)) as served:
        manager = served.service.manager
        start = manager.state
        async with rank_load(served.client, body, max_seconds=150) as load:
            process = retrain(
                config, "train.train.epochs=500", "train.train.patience=0"
            )  # would train for minutes: killed in its first epochs
            seconds = await asyncio.to_thread(kill_when_training, process, tmp_path / "runs", 120)
            await asyncio.sleep(0.5)  # several polls of the file store
            await grows(load, 20)
        assert manager.state is start and manager.status.rejected is None
    assert tree(settings.registry, skip=(LOCK,)) == registry_before
    assert experiments.read_bytes() == config_before
    assert not list((settings.registry / "ranker").glob(".tmp-*"))
    assert load.failed == 0, load.summary()
    assert set(load.versions) == {"ranker/v0002"}
    record("fault_retrain_killed", {**load.summary(), "killed_after_s": round(seconds, 1)})


@pytest.mark.slow
async def test_the_next_retrain_after_a_killed_one_is_served_without_a_lost_request(
    settings: Settings, built: Built, body: dict[str, Any], tmp_path: Path
) -> None:
    config = retrain_config(settings, built.log, tmp_path)
    async with serve(replace(settings, poll_interval_s=0.1)) as served:
        manager = served.service.manager
        async with rank_load(served.client, body, max_seconds=400) as load:
            killed = retrain(config, "train.train.epochs=500", "train.train.patience=0")
            await asyncio.to_thread(kill_when_training, killed, tmp_path / "runs", 120)
            assert (settings.registry / LOCK).exists()  # left behind by the killed run
            # trained longer than production (8 steps), so it should pass the gate
            process = retrain(config, "train.train.epochs=4", "train.train.max_steps_per_epoch=20")
            output, _ = await asyncio.to_thread(process.communicate, timeout=300)
            assert process.returncode == 0, output.decode()
            (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("reports/*/report.json")]
            decision = report["decision"]
            if decision == "publish":
                await wait_for(lambda: "ranker/v0003" in served_models(manager), timeout=15)
            await grows(load, 20)
        assert manager.status.rejected is None
    # The file stays (an OS lock: the kernel released the killed run's hold); it is free again.
    lock = FileLock(settings.registry / LOCK, ttl_s=60)
    lock.acquire()
    lock.release()
    assert load.failed == 0, load.summary()
    stored = yaml.safe_load(Path(str(settings.experiments_file)).read_text())
    if decision == "publish":
        assert stored["default"]["model"] == {"name": "ranker", "version": "v0003"}
        assert set(load.versions) == {"ranker/v0002", "ranker/v0003"}
    else:  # the gate kept production: nothing changed
        assert decision == "keep", report
        assert set(load.versions) == {"ranker/v0002"}
    record("fault_retrain_then_publish", {**load.summary(), "decision": decision})


# -- (d) disk full under the impression log ----------------------------------------------------------
async def test_disk_full_impression_log(
    settings: Settings, body: dict[str, Any], tmp_path: Path
) -> None:
    """On a 4 MiB tmpfs: log, fill the disk, keep ranking, free it, log again; then read the
    file back. Where no tmpfs can be mounted, /dev/full (every write fails with ENOSPC)."""
    with tiny_filesystem(tmp_path / "fs", 4096) as mounted:
        if not mounted:
            await _dev_full(settings, body)
            return
        log = tmp_path / "fs" / "impressions.jsonl"
        filler = tmp_path / "fs" / "filler"
        async with serve(replace(settings, impression_log=log)) as served:
            impressions = served.service.impressions
            # Bounded by time, not by a small count: on a fast machine 2000 requests end before
            # the disk is full. Records may fill the 4 MiB disk by themselves late in the run,
            # after the `before` snapshot: a disk-full condition all the same.
            load_cap = rank_load(served.client, body, max_requests=50_000, max_seconds=90)
            async with load_cap as load:
                await grows(load, 20)
                # Any snapshot of the append-only file is a prefix of it while writes succeed
                # (the disk is far from full here): no need to catch the queue empty under load.
                await wait_for(lambda: impressions.written >= 20)
                before = log.read_bytes()
                await asyncio.to_thread(fill, filler)
                await wait_for(lambda: impressions.failed > 0, timeout=30)
                full_from = load.ok
                await grows(load, 300)  # ranking goes on while nothing can be logged
                ready, metrics = await scrape(served)
                assert ready["impressions"]["failed"] > 0
                assert (metric(metrics, "ranker_impressions_total", 'outcome="failed"') or 0) > 0
                full_to = load.ok
                filler.unlink()  # space again: logging resumes
                written = impressions.written
                await wait_for(lambda: impressions.written > written, timeout=15)
                await grows(load, 20)
        final = log.read_bytes()  # the service is closed: its writer drained and closed the file
    counts = {"written": impressions.written, "failed": impressions.failed}
    summary = {**load.summary(), "answered_while_full": full_to - full_from}
    record("fault_disk_full", {**summary, "impressions": counts, "fs": "tmpfs 4 MiB"})
    assert load.failed == 0, load.summary()
    assert final.startswith(before)  # what was written before the disk filled is intact


async def _dev_full(settings: Settings, body: dict[str, Any]) -> None:
    async with serve(replace(settings, impression_log=Path("/dev/full"))) as served:
        impressions = served.service.impressions
        async with rank_load(served.client, body, max_seconds=60) as load:
            await wait_for(lambda: impressions.failed > 0, timeout=30)
            await grows(load, 20)
            ready, metrics = await scrape(served)
            assert ready["impressions"]["failed"] > 0 and ready["impressions"]["written"] == 0
            assert (metric(metrics, "ranker_impressions_total", 'outcome="failed"') or 0) > 0
    counts = {"written": impressions.written, "failed": impressions.failed}
    record("fault_disk_full", {**load.summary(), "impressions": counts, "fs": "/dev/full"})
    assert load.failed == 0, load.summary()


async def test_a_batch_refused_for_space_leaves_no_trace(
    settings: Settings, body: dict[str, Any], tmp_path: Path
) -> None:
    """Deterministic: one ~20 KB impression record arrives when only two pages are free."""
    with tiny_filesystem(tmp_path / "fs", 1024) as mounted:
        assert mounted, "needs a tmpfs mount (root)"
        log = tmp_path / "fs" / "impressions.jsonl"
        filler = tmp_path / "fs" / "filler"
        async with serve(replace(settings, impression_log=log)) as served:
            impressions = served.service.impressions
            for i in range(5):
                await served.client.post("/rank", json={**body, "request_id": f"small-{i}"})
            await wait_for(lambda: impressions.written == 5)
            await asyncio.to_thread(fill, filler)
            os.truncate(filler, filler.stat().st_size - 8192)  # two pages free
            big = {
                **body,
                "request_id": "big",
                "candidates": [
                    {**c, "item_id": f"{i}-" + "x" * 2000} for i, c in enumerate(body["candidates"])
                ],
            }
            assert (await served.client.post("/rank", json=big)).status_code == 200
            await wait_for(lambda: impressions.failed == 1, timeout=10)
            filler.unlink()
            for i in range(3):
                await served.client.post("/rank", json={**body, "request_id": f"after-{i}"})
            await wait_for(lambda: impressions.written == 8, timeout=10)
        lines = log.read_bytes().splitlines()
    ids = []
    for line in lines:
        try:
            ids.append(orjson.loads(line)["request_id"])
        except orjson.JSONDecodeError:
            ids.append(f"<torn line of {len(line)} bytes>")
    expected = [*(f"small-{i}" for i in range(5)), *(f"after-{i}" for i in range(3))]
    assert ids == expected  # the refused batch left nothing, the others are whole and once


async def test_malformed_config_file_at_start_up_is_reported(settings: Settings) -> None:
    path = Path(str(settings.experiments_file))
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "layers": 7}))
    async with serve(settings) as served:
        ready = await served.client.get("/readyz")
        assert ready.status_code == 503 and "layers" in ready.json()["reason"]
