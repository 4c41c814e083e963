"""Retraining: the publish gate, rollout into the service's experiment store (file and real Redis),
atomicity of failed and killed runs, the lock (file and Redis), and the cron scheduler.

Redis tests use the server at 127.0.0.1:6379 with a unique key prefix and fail if it is down.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from cli.main import main
from ranker.experiment_store import FileStore, RedisStore
from ranker.experiments import ModelRef
from ranker.registry import list_versions, load_manifest
from sim.simulate import SimulatorConfig, simulate
from tests.conftest import REDIS_URL
from training.config import ConfigError, load_config
from training.data import EncodedData
from training.exit_codes import EXIT_LOCKED, EXIT_UNREFERENCED
from training.retrain.config import ENV_KEYS, RetrainConfig, load_retrain_config
from training.retrain.lock import FileLock, LockedError, LockLostError, RedisLock
from training.retrain.run import open_lock, open_store, run_once
from training.schedule import run_schedule
from training.trainer import Trainer

REPO = Path(__file__).resolve().parents[3]

SIM = SimulatorConfig(users=200, items=600, authors=60, days=5, requests_per_day=80, oracle=True)
TINY_TRAIN: dict[str, Any] = {
    "model": {
        "kind": "mmoe",
        "config": {"num_experts": 3, "expert_units": [16], "tower_units": [8], "embedding_dim": 4},
    },
    "train": {"epochs": 2, "batch_size": 256, "max_steps_per_epoch": 4, "threads": 1},
}
# The first production model is deliberately weak, so a normally trained candidate beats it.
WEAK = ["train.train.epochs=1", "train.train.max_steps_per_epoch=1"]
IMPOSSIBLE = "gate.min_improvement=1000"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ENV_KEYS:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="module")
def log5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("retrain_log")
    simulate(SIM, out)
    return out


def write_config(root: Path, log: Path, redis_prefix: str | None = None) -> Path:
    doc: dict[str, Any] = {
        "train": TINY_TRAIN,
        "data": {"paths": [str(log)]},
        "window_days": 5,
        "registry": str(root / "models"),
        "experiments": {"file": str(root / "experiments.yaml")},
        "runs_dir": str(root / "runs"),
        "report_dir": str(root / "reports"),
    }
    if redis_prefix is not None:
        doc["experiments"] = {"redis_url": REDIS_URL, "redis_prefix": redis_prefix, "file": None}
        doc["lock"] = {"ttl_s": 3.0}
    path = root / "retrain.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def configure(root: Path, log: Path, *overrides: str, prefix: str | None = None) -> RetrainConfig:
    return load_retrain_config(write_config(root, log, prefix), overrides, environ={})


def state(root: Path, prefix: str | None = None) -> dict[str, Any]:
    """Everything a run may change: registry entries (temporary ones too) and the config."""
    folder = root / "models" / "ranker"
    exp = root / "experiments.yaml"
    out: dict[str, Any] = {
        "registry": sorted(p.name for p in folder.iterdir()) if folder.is_dir() else [],
        "file": exp.read_bytes() if exp.exists() else None,
    }
    if prefix is not None:
        client = redis.Redis.from_url(REDIS_URL)
        out["redis"] = client.hgetall(f"{prefix}:experiments")
        client.close()
    return out


def report(root: Path) -> dict[str, Any]:
    (latest,) = sorted((root / "reports").iterdir())[-1:]
    assert (latest / "report.md").is_file()
    return json.loads((latest / "report.json").read_text())


def reports(root: Path) -> list[dict[str, Any]]:
    return [
        json.loads((d / "report.json").read_text()) for d in sorted((root / "reports").iterdir())
    ]


@dataclass(frozen=True)
class FirstRun:
    root: Path
    out: Any


@pytest.fixture(scope="module")
def first(log5: Path, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    """The first run on an empty registry and no experiment config (file store)."""
    root = tmp_path_factory.mktemp("first")
    return FirstRun(root, run_once(configure(root, log5, *WEAK)))


def with_production(first: FirstRun, root: Path, prefix: str | None = None) -> None:
    """Copy the first run's registry and config; with a prefix, store that config in Redis."""
    shutil.copytree(first.root / "models", root / "models")
    shutil.copy(first.root / "experiments.yaml", root / "experiments.yaml")
    if prefix is not None:
        file_config = FileStore(root / "experiments.yaml", root / "models").load()
        store = RedisStore(REDIS_URL, f"{prefix}:experiments", f"{prefix}:c", root / "models")
        store.save(file_config, expected_version=0)
        store.close()
        (root / "experiments.yaml").unlink()


# -- one run ---------------------------------------------------------------------------------------
def test_first_run_publishes_v0001_and_points_the_config_at_it(first: FirstRun) -> None:
    out = first.out
    assert (out.decision, out.published, out.exit_code, out.production) == (
        "publish",
        "v0001",
        0,
        None,
    )
    registry = first.root / "models"
    assert list_versions(registry, "ranker") == ["v0001"]
    assert load_manifest(registry / "ranker" / "v0001").parent is None
    config = FileStore(first.root / "experiments.yaml", registry).load()
    assert config.default_model == ModelRef("ranker", "v0001") and config.version == 1
    doc = report(first.root)
    assert doc["decision"] == "publish" and "no production model" in doc["reason"]
    assert doc["window"]["gate"] == ["2026-01-05"] and doc["window"]["valid"] == ["2026-01-04"]
    free = FileLock(registry / ".retrain-ranker.lock", ttl_s=1.0)  # released: taken at once
    free.acquire()
    free.release()


def test_a_gate_that_cannot_be_met_publishes_nothing(
    first: FirstRun, log5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_production(first, tmp_path)
    before = state(tmp_path)
    path = write_config(tmp_path, log5)
    assert main(["retrain", "--config", str(path), IMPOSSIBLE]) == 0
    assert state(tmp_path) == before
    doc = report(tmp_path)
    assert doc["decision"] == "keep" and doc["published"] is None
    assert "score changed by" in doc["reason"] and "lower bound not > +1000" in doc["reason"]
    assert doc["production"] == "ranker/v0001" and math.isfinite(doc["checks"][0]["production"])
    head = doc["checks"][0]
    assert head["low"] <= head["change"] <= head["high"]
    assert doc["gate_sample"]["bootstrap"] == 200 and doc["gate_sample"]["requests"] == 80
    printed = capsys.readouterr().out
    assert "Retraining run" in printed and ": keep" in printed and "| score | primary |" in printed
    assert (
        "95% interval" in printed and "paired bootstrap over the gate day's 80 requests" in printed
    )


def test_a_passing_gate_in_treatment_mode_adds_the_candidate_layer(
    first: FirstRun, log5: Path, tmp_path: Path
) -> None:
    with_production(first, tmp_path)
    config = configure(
        tmp_path, log5, "rollout.mode=treatment", "rollout.share=0.25", "gate.tolerance=1.0"
    )
    out = run_once(config)
    assert (out.decision, out.published, out.exit_code) == ("publish", "v0002", 0), out.reason
    assert load_manifest(tmp_path / "models" / "ranker" / "v0002").parent == "v0001"
    stored = FileStore(tmp_path / "experiments.yaml", tmp_path / "models").load()
    assert stored.version == 2
    assert stored.default_model == ModelRef("ranker", "v0001")  # control keeps production
    (layer,) = [layer for layer in stored.layers if layer.name == "retrain"]
    (variant,) = layer.variants
    assert (variant.name, variant.start, variant.end, layer.buckets) == ("candidate", 0, 25, 100)
    assert variant.model == ModelRef("ranker", "v0002")
    shares = [stored.assign(f"u{i}").model.version for i in range(2000)]
    assert 0.2 < shares.count("v0002") / len(shares) < 0.3


def test_redis_store_first_publish_then_a_refused_gate(
    log5: Path, tmp_path: Path, redis_prefix: str
) -> None:
    out = run_once(configure(tmp_path, log5, *WEAK, prefix=redis_prefix))
    assert (out.decision, out.published) == ("publish", "v0001"), out.reason
    # The service's own store reads what the run wrote (its key names, its parser).
    service = RedisStore(
        REDIS_URL, f"{redis_prefix}:experiments", f"{redis_prefix}:c", tmp_path / "models"
    )
    assert service.load().default_model == ModelRef("ranker", "v0001")
    service.close()
    client = redis.Redis.from_url(REDIS_URL)
    assert client.exists(f"{redis_prefix}:retrain:ranker:lock") == 0
    before = state(tmp_path, redis_prefix)
    out = run_once(configure(tmp_path, log5, IMPOSSIBLE, prefix=redis_prefix))
    assert (out.decision, out.published, out.exit_code) == ("keep", None, 0)
    assert state(tmp_path, redis_prefix) == before
    assert client.exists(f"{redis_prefix}:retrain:ranker:lock") == 0
    client.close()


# -- atomicity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_run_that_dies_in_training_leaves_registry_config_and_lock_clean(
    first: FirstRun,
    log5: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    prefix = request.getfixturevalue("redis_prefix") if backend == "redis" else None
    with_production(first, tmp_path, prefix)
    before = state(tmp_path, prefix)
    original = Trainer.train_step
    steps = []

    def dies_half_way(self: Trainer, batch: EncodedData) -> dict[str, Any]:
        steps.append(1)
        if len(steps) == 3:
            raise RuntimeError("killed half-way through training")
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", dies_half_way)
    config = configure(tmp_path, log5, "gate.tolerance=1.0", prefix=prefix)
    with pytest.raises(RuntimeError, match="half-way"):
        run_once(config)
    assert state(tmp_path, prefix) == before
    doc = report(tmp_path)
    assert doc["decision"] == "failed" and "untouched" in doc["reason"]
    lock = open_lock(config)
    lock.acquire()  # released by the failed run
    lock.release()


def test_a_config_edited_during_the_export_is_not_overwritten(
    first: FirstRun, log5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.export

    with_production(first, tmp_path)
    store = FileStore(tmp_path / "experiments.yaml", tmp_path / "models")
    original = training.export.export_run

    def export_while_someone_edits(*args: Any, **kwargs: Any) -> Any:
        manifest = original(*args, **kwargs)
        store.save(store.load(), expected_version=1)  # e.g. an operator's edit: version 2
        return manifest

    monkeypatch.setattr(training.export, "export_run", export_while_someone_edits)
    out = run_once(configure(tmp_path, log5, "gate.tolerance=1.0"))
    assert (out.decision, out.published, out.exit_code) == ("publish", "v0002", EXIT_UNREFERENCED)
    edited = store.load()
    assert edited.version == 2 and edited.default_model == ModelRef("ranker", "v0001")
    doc = report(tmp_path)
    assert "StaleVersionError" in doc["reason"] and "NOT updated" in doc["reason"]


KILLED = """
import pathlib, sys, time
from training.trainer import Trainer
def hang(self, batch):
    pathlib.Path(sys.argv[1]).write_text("training")
    time.sleep(600)
Trainer.train_step = hang
from cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_sigkill_mid_training_leaves_everything_and_the_lock_frees(
    first: FirstRun, log5: Path, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    prefix = request.getfixturevalue("redis_prefix") if backend == "redis" else None
    with_production(first, tmp_path, prefix)
    before = state(tmp_path, prefix)
    path = write_config(tmp_path, log5, prefix)
    ready = tmp_path / "ready"
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(ready), "retrain", "--config", str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the run never reached training"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()
    assert state(tmp_path, prefix) == before
    config = load_retrain_config(path, environ={})
    lock = open_lock(config)
    if backend == "file":
        # Left behind, but its pid is dead on this host: the next run breaks it at once.
        assert (tmp_path / "models" / ".retrain-ranker.lock").exists()
        lock.acquire()
    else:
        with pytest.raises(LockedError):
            lock.acquire()
        deadline = time.monotonic() + 3 * config.lock.ttl_s
        while True:  # nobody renews it any more: it expires after the ttl
            try:
                lock.acquire()
                break
            except LockedError:
                assert time.monotonic() < deadline, "the killed run's lock never expired"
                time.sleep(0.1)
    lock.release()


# A run that stops at one stage of the publish and waits there to be killed: argv[1] is the stage,
# argv[2] a file it writes on arriving, the rest the `ranker` command line.
STOPS_AT = """
import pathlib, sys, time
import ranker.registry, training.retrain.run
stage, ready = sys.argv[1], pathlib.Path(sys.argv[2])
def stop(*args, **kwargs):
    ready.write_text(stage)
    time.sleep(600)
write = ranker.registry._write_synced
def write_model_then_stop(path, data):
    write(path, data)
    if path.name == "model.onnx":
        stop()
if stage == "export":  # inside the registry publish: the .tmp-* directory holds model.onnx
    ranker.registry._write_synced = write_model_then_stop
else:  # published, the experiment config not yet saved
    training.retrain.run.rolled_out = stop
from cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def kill_at(stage: str, tmp_path: Path, config: Path) -> None:
    """Run `ranker retrain` in a subprocess, SIGKILL it once it reaches `stage`."""
    ready = tmp_path / f"ready-{stage}"
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    args = [sys.executable, "-c", STOPS_AT, stage, str(ready), "retrain", "--config", str(config)]
    process = subprocess.Popen(
        [*args, "gate.tolerance=1.0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, f"the run never reached {stage}"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


def rank_version(root: Path, log: Path) -> str:
    """The model version the real service (ASGI app, file store) serves from root's registry."""
    import asyncio

    import pyarrow.parquet as pq

    from serving.settings import Settings
    from tests.serving.conftest import body_of, serve

    rows = pq.read_table(sorted(log.glob("*/*.parquet"))[-1]).to_pylist()
    body = body_of([r for r in rows if r["request_id"] == rows[0]["request_id"]])
    settings = Settings(
        registry=root / "models",
        experiments_file=root / "experiments.yaml",
        warmup_counts=(1,),
        intra_op_threads=1,
        freeze_gc=False,
        gc_threshold=0,
    )

    async def ask() -> str:
        async with serve(settings) as served:
            response = await served.client.post("/rank", json=body)
            assert response.status_code == 200, response.text
            return str(response.json()["model_version"])

    return asyncio.run(ask())


def test_sigkill_between_publish_and_config_save_leaves_an_orphan_never_served_then_removed(
    first: FirstRun, log5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_production(first, tmp_path)
    # A hand-written config following `latest` (as the packaged default does): the run pins it
    # before exporting, so the orphan is never picked up.
    doc = yaml.safe_load((tmp_path / "experiments.yaml").read_text())
    doc["default"]["model"]["version"] = "latest"
    (tmp_path / "experiments.yaml").write_text(yaml.safe_dump(doc))
    path = write_config(tmp_path, log5)
    kill_at("config", tmp_path, path)
    assert list_versions(tmp_path / "models", "ranker") == ["v0001", "v0002"]  # the orphan
    store = FileStore(tmp_path / "experiments.yaml", tmp_path / "models")
    assert store.load().model_refs() == [ModelRef("ranker", "v0001")]
    assert yaml.safe_load(store.path.read_text())["default"]["model"]["version"] == "v0001"
    assert rank_version(tmp_path, log5) == "ranker/v0001"  # the service serves production
    # The cleanup command removes it, and says so; a second cleanup finds nothing.
    assert main(["retrain", "--config", str(path), "--cleanup"]) == 0
    printed = capsys.readouterr().out
    assert "cleanup: removed ranker/v0002: published by run" in printed, printed
    assert list_versions(tmp_path / "models", "ranker") == ["v0001"]
    assert not (tmp_path / "models" / ".retrain-ranker.publish.json").exists()
    assert main(["retrain", "--config", str(path), "--cleanup"]) == 0
    assert "cleanup: nothing to clean up" in capsys.readouterr().out
    assert rank_version(tmp_path, log5) == "ranker/v0001"


def test_sigkill_between_publish_and_config_save_on_redis_then_the_next_run_cleans_up(
    first: FirstRun, log5: Path, tmp_path: Path, redis_prefix: str
) -> None:
    with_production(first, tmp_path, redis_prefix)
    before = state(tmp_path, redis_prefix)
    path = write_config(tmp_path, log5, redis_prefix)
    kill_at("config", tmp_path, path)
    assert state(tmp_path, redis_prefix)["registry"] == ["v0001", "v0002"]
    assert state(tmp_path, redis_prefix)["redis"] == before["redis"]  # the config never moved
    # The next run (its lock expires after the ttl) first removes the orphan, then runs.
    config = load_retrain_config(path, [IMPOSSIBLE], environ={})
    deadline = time.monotonic() + 3 * config.lock.ttl_s
    while True:
        try:
            out = run_once(config)
            break
        except LockedError:
            assert time.monotonic() < deadline, "the killed run's lock never expired"
            time.sleep(0.2)
    assert out.decision == "keep" and state(tmp_path, redis_prefix) == before
    assert any("removed ranker/v0002: published by run" in line for line in out.cleanup)
    assert "cleanup: removed ranker/v0002" in (Path(out.report_dir) / "report.md").read_text()


def test_sigkill_during_export_leaves_a_tmp_directory_the_next_run_removes(
    first: FirstRun, log5: Path, tmp_path: Path
) -> None:
    with_production(first, tmp_path)
    before = state(tmp_path)
    # Debris of something else (not this job's): reported, never deleted.
    foreign = tmp_path / "models" / "ranker" / ".tmp-someone-else"
    foreign.mkdir()
    old = time.time() - 3600
    os.utime(foreign, (old, old))
    path = write_config(tmp_path, log5)
    kill_at("export", tmp_path, path)
    folder = tmp_path / "models" / "ranker"
    debris = sorted(p.name for p in folder.glob(".tmp-*") if p != foreign)
    assert len(debris) == 1 and (folder / debris[0] / "model.onnx").is_file()
    assert list_versions(tmp_path / "models", "ranker") == ["v0001"]
    assert FileStore(tmp_path / "experiments.yaml", tmp_path / "models").load().version == 1
    out = run_once(load_retrain_config(path, [IMPOSSIBLE], environ={}))
    assert out.decision == "keep"
    assert sorted(p.name for p in folder.glob(".tmp-*")) == [foreign.name]
    removed = [line for line in out.cleanup if line.startswith("removed")]
    assert len(removed) == 1 and debris[0] in removed[0] and "left by run" in removed[0]
    assert any(foreign.name in line and "unknown publish" in line for line in out.cleanup)
    after = state(tmp_path)
    assert after["file"] == before["file"]


def test_cleanup_reports_an_unreferenced_newer_version_it_did_not_make(
    first: FirstRun, tmp_path: Path, log5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.serving.conftest import republish

    with_production(first, tmp_path)
    republish(tmp_path / "models", "v0001")  # e.g. a manual `ranker export`: v0002
    path = write_config(tmp_path, log5)
    assert main(["retrain", "--config", str(path), "--cleanup"]) == 0
    printed = capsys.readouterr().out
    assert "cleanup: found ranker/v0002: published, newer than every version" in printed
    assert list_versions(tmp_path / "models", "ranker") == ["v0001", "v0002"]  # left as is


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_a_second_run_is_refused_while_one_runs(
    first: FirstRun,
    log5: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    prefix = request.getfixturevalue("redis_prefix") if backend == "redis" else None
    with_production(first, tmp_path, prefix)
    before = state(tmp_path, prefix)
    path = write_config(tmp_path, log5, prefix)
    training, finish = threading.Event(), threading.Event()

    def blocks(self: Trainer, batch: EncodedData) -> dict[str, Any]:
        training.set()
        finish.wait(30)
        raise RuntimeError("first run stopped by the test")

    monkeypatch.setattr(Trainer, "train_step", blocks)
    errors: list[BaseException] = []

    def first_run() -> None:
        try:
            run_once(load_retrain_config(path, environ={}))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        assert training.wait(60), "the first run never reached training"
        assert main(["retrain", "--config", str(path)]) == EXIT_LOCKED
    finally:
        finish.set()
        thread.join(30)
    err = capsys.readouterr().err
    assert "another retraining run holds" in err and f"pid {os.getpid()}" in err
    assert [str(e) for e in errors] == ["first run stopped by the test"]
    assert state(tmp_path, prefix) == before
    assert len(reports(tmp_path)) == 1  # the refused run wrote none


# -- scheduler -------------------------------------------------------------------------------------
def test_schedule_runs_twice_and_goes_on_after_a_failed_run(
    first: FirstRun,
    log5: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with_production(first, tmp_path)
    before = state(tmp_path)
    original = Trainer.fit
    calls = []

    def first_fails(self: Trainer) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        return original(self)

    monkeypatch.setattr(Trainer, "fit", first_fails)
    path = write_config(tmp_path, log5)
    args = ["retrain", "--config", str(path), "--schedule", "* * * * * *", "--max-runs", "2"]
    with caplog.at_level("INFO", logger="ranker.retrain"):
        assert main([*args, IMPOSSIBLE]) == 1  # one run failed
    assert [r["decision"] for r in reports(tmp_path)] == ["failed", "keep"]
    assert "2 runs, 1 failed, 0 skipped" in caplog.text
    assert state(tmp_path) == before


def test_schedule_stops_cleanly_on_sigterm() -> None:
    calls = []
    previous = signal.getsignal(signal.SIGTERM)

    def job() -> int:
        calls.append(1)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives during the run: stop after it
        return 0

    assert run_schedule("* * * * * *", job) == 0
    assert len(calls) == 1
    assert signal.getsignal(signal.SIGTERM) is previous

    def twice() -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal aborts the run
        return 0

    with pytest.raises(KeyboardInterrupt):
        run_schedule("* * * * * *", twice)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_schedule_counts_locked_runs_as_skipped(caplog: pytest.LogCaptureFixture) -> None:
    codes = iter([EXIT_LOCKED, 0])
    with caplog.at_level("INFO", logger="ranker.retrain"):
        assert run_schedule("* * * * * *", lambda: next(codes), max_runs=2) == 0
    assert "2 runs, 0 failed, 1 skipped" in caplog.text


@pytest.mark.parametrize("expression", ["every day", "61 * * * *", "* * *"])
def test_a_bad_cron_expression_exits_2(
    tmp_path: Path, log5: Path, capsys: pytest.CaptureFixture[str], expression: str
) -> None:
    path = write_config(tmp_path, log5)
    assert main(["retrain", "--config", str(path), "--schedule", expression]) == 2
    err = capsys.readouterr().err
    assert f"--schedule {expression!r}: not a valid cron expression" in err
    assert main(["retrain", "--config", str(path), "--max-runs", "2"]) == 2
    assert "--max-runs: needs --schedule" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


# -- configuration ---------------------------------------------------------------------------------
def test_the_shipped_config_loads_and_containers_redirect_it() -> None:
    config = load_retrain_config(REPO / "configs" / "retrain.yaml", environ={})
    assert config.registry == "out/demo/models" and config.data.paths == ("out/demo/data",)
    assert config.experiments.file == "out/demo/experiments.yaml"
    assert config.experiments.redis_url is None and isinstance(open_lock(config), FileLock)
    recommended = load_config(REPO / "configs" / "train.yaml")
    assert config.train.balancer == recommended.balancer and config.train.aux == recommended.aux
    assert config.train.tasks == recommended.tasks
    assert config.train.model.config["interactions"] == "dot"
    assert config.train.model.config["factor_rank"] == recommended.model.config["factor_rank"]
    assert config.train.optimizer.factor_l2 == recommended.optimizer.factor_l2
    assert config.train.optimizer.l2_per_id == recommended.optimizer.l2_per_id
    # docker-compose.yml and the Kubernetes CronJob set these for `ranker retrain`.
    environ = {"RANKER_REGISTRY": "/models", "RANKER_REDIS_URL": "redis://redis:6379/0"}
    config = load_retrain_config(REPO / "configs" / "retrain.yaml", ["registry=/r"], environ)
    assert config.registry == "/r"  # the command line wins over the environment
    config = load_retrain_config(REPO / "configs" / "retrain.yaml", [], environ)
    assert config.registry == "/models"
    assert config.experiments.redis_url == "redis://redis:6379/0"
    store, lock = open_store(config), open_lock(config)
    assert isinstance(store, RedisStore) and store.key == "ranker:experiments"  # the service's
    assert isinstance(lock, RedisLock) and lock.key == "ranker:retrain:ranker:lock"
    store.close()


def test_train_may_be_a_file_beside_the_config_and_overrides_reach_it(tmp_path: Path) -> None:
    (tmp_path / "prod.yaml").write_text(yaml.safe_dump({"balancer": {"name": "uw"}}))
    (tmp_path / "retrain.yaml").write_text(yaml.safe_dump({"train": "prod.yaml"}))
    config = load_retrain_config(tmp_path / "retrain.yaml", ["train.train.epochs=5"], environ={})
    assert config.train.balancer.name == "uw" and config.train.train.epochs == 5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gate.primay=score", "gate.primay: unknown key"),
        ("rollout.mode=canary", "rollout.mode: must be replace or treatment"),
        ("rollout.share=0", "rollout.share: must be in (0, 1]"),
        ("window_days=2", "window_days: must be >= 3"),
        ("gate.metrics=[click.calibration]", "gate.metrics[0]: unknown metric 'click.calibration'"),
        ("gate.primary=watch_time.ndcg@5", "gate.primary: unknown metric"),
        ("gate.min_improvement=-0.1", "gate.min_improvement: must be >= 0"),
        ("gate.bootstrap=5", "gate.bootstrap: must be >= 20"),
        ("gate.confidence=1", "gate.confidence: must be in [0.5, 1)"),
        (
            "gate.tolerances={click.gauc: 0.1}",
            "gate.tolerances.click.gauc: not one of gate.metrics",
        ),
        ("train.model.kind=rnn", "train.model.kind: unknown model"),
        ("lock.backend=zookeeper", "lock.backend: must be auto, redis or file"),
        ("experiments.file=null", "experiments: set redis_url or file"),
    ],
)
def test_config_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_retrain_config(REPO / "configs" / "retrain.yaml", [override], environ={})
    assert message in str(info.value)


# -- lock ------------------------------------------------------------------------------------------
def test_file_lock_refuses_a_second_holder_and_notices_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "retrain.lock"
    held = FileLock(path, ttl_s=1.0)
    held.acquire()
    time.sleep(1.5)  # past the ttl: the keep-alive thread checked it is still ours
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        FileLock(path, ttl_s=1.0).acquire()
    held.check()
    # Replaced behind its back (a new file another run could lock): lost, and release keeps it.
    other = tmp_path / "other"
    other.write_text(json.dumps({"token": "x", "pid": 1, "host": "elsewhere", "since": "-"}))
    os.replace(other, path)
    time.sleep(0.8)
    with pytest.raises(LockLostError):
        held.check()
    held.release()
    assert "elsewhere" in path.read_text()
    # The replacing file is not locked by anybody: the next run takes it, and frees it again.
    fresh = FileLock(path, ttl_s=60)
    fresh.acquire()
    fresh.check()
    fresh.release()
    again = FileLock(path, ttl_s=60)
    again.acquire()
    again.release()


def test_file_lock_of_a_killed_process_frees_at_once(tmp_path: Path) -> None:
    """The OS lock dies with its process: no ttl to wait out, no pid or host to compare."""
    path = tmp_path / "retrain.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom training.retrain.lock import FileLock\n"
            "FileLock(sys.argv[1], ttl_s=60).acquire()\nprint('held', flush=True)\ntime.sleep(60)",
            str(path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            FileLock(path, ttl_s=60).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout:
            holder.stdout.close()
    lock = FileLock(path, ttl_s=60)
    lock.acquire()
    lock.release()


def test_redis_lock_is_renewed_while_held_and_only_its_owner_releases_it(
    redis_prefix: str,
) -> None:
    key = f"{redis_prefix}:lock"
    client = redis.Redis.from_url(REDIS_URL)
    lock = RedisLock(REDIS_URL, key, ttl_s=1.0)
    lock.acquire()
    with pytest.raises(LockedError):
        RedisLock(REDIS_URL, key, ttl_s=1.0).acquire()
    time.sleep(2.0)  # well past the ttl: the keep-alive thread renewed it
    lock.check()
    assert client.get(key) == lock.value.encode()
    client.set(key, "someone else")  # e.g. taken over after a long pause
    time.sleep(0.8)
    with pytest.raises(LockLostError):
        lock.check()
    lock.release()
    assert client.get(key) == b"someone else"  # compare-and-delete left it alone
    client.close()


def test_a_debiased_candidate_and_production_are_gated_at_the_served_positions(
    first: FirstRun, log5: Path, tmp_path: Path
) -> None:
    from tests.training.test_debias import with_positions

    positioned = with_positions(log5, tmp_path / "positioned")
    scores = {}
    for debias in ("none", "pal"):
        root = tmp_path / debias
        with_production(first, root)
        out = run_once(configure(root, positioned, f"train.debias.position={debias}"))
        doc = report(root)
        scored = {c["metric"]: c["production"] for c in doc["checks"]}
        scores[debias] = scored
        shown = (root / "reports").glob("*/report.md")
        mentioned = any("at the served positions" in p.read_text() for p in shown)
        assert doc["gate_sample"]["at_served_positions"] is (debias == "pal") is mentioned
        assert out.decision in ("publish", "keep")
    # Production is the same model on the same rows: the debiased gate scored it times the
    # candidate's P(seen | position) <= 1, which moves its RMSEs (as_is: its served outputs).
    moved = [k for k in scores["none"] if "rmse" in k and scores["none"][k] != scores["pal"][k]]
    assert moved
