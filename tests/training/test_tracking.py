"""MLflow tracking with a local file store: params, per-epoch metrics, plots, the ONNX artifact
and the registry version land in one MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import training.tracking as tracking
from sim.simulate import SimulatorConfig, simulate
from training.config import ConfigError, TrainConfig, load_config
from training.export import export_run
from training.prepare import prepare_data
from training.trainer import Trainer


def _config(log: Path, run: Path, uri: str | None) -> TrainConfig:
    return load_config(
        None,
        [
            f"data.paths=[{log}]",
            "model.config.expert_units=[16]",
            "model.config.tower_units=[8]",
            "model.config.num_experts=2",
            "train.epochs=2",
            "train.patience=0",
            "train.max_steps_per_epoch=3",
            "train.batch_size=256",
            "train.threads=1",
            f"out={run}",
            *([f"tracking.mlflow_uri={uri}", "tracking.experiment=test"] if uri else []),
        ],
    )


def test_a_tracked_run_and_its_export_land_in_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's opt-in for file stores
    log, run, registry = tmp_path / "log", tmp_path / "run", tmp_path / "models"
    simulate(SimulatorConfig(users=200, items=500, authors=50, days=3, requests_per_day=60), log)
    uri = f"file:{tmp_path / 'mlruns'}"
    config = _config(log, run, uri)
    Trainer(config, prepare_data(config), run, progress=False).fit()

    run_id = json.loads((run / tracking.RUN_FILE).read_text())["run_id"]
    client = MlflowClient(tracking_uri=uri)
    recorded = client.get_run(run_id)
    assert recorded.info.status == "FINISHED"
    assert client.get_experiment(recorded.info.experiment_id).name == "test"
    params = recorded.data.params
    assert params["train.epochs"] == "2" and params["model.kind"] == "mmoe"
    assert params["tracking.mlflow_uri"] == uri
    history = client.get_metric_history(run_id, "train_loss.click")
    assert sorted(m.step for m in history) == [1, 2]
    metrics = json.loads((run / "metrics.json").read_text())
    auc = client.get_metric_history(run_id, "valid.click.auc")
    assert [m.value for m in sorted(auc, key=lambda m: m.step)] == pytest.approx(
        [e["valid"]["click"]["auc"] for e in metrics["history"]]
    )
    assert "valid.watch_time.ndcg_10" in recorded.data.metrics  # `@` is not allowed in names
    assert recorded.data.metrics["best.test.click.auc"] == pytest.approx(
        metrics["test"]["click"]["auc"]
    )
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "metrics.json" in artifacts
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert "plots/losses.png" in plots

    manifest = export_run(run, registry, "ranker")
    prefix = f"registry/ranker/{manifest.version}"
    files = {a.path for a in client.list_artifacts(run_id, prefix)}
    assert files == {f"{prefix}/{n}" for n in ("model.onnx", "manifest.json", "MODEL_CARD.md")}
    assert client.get_run(run_id).data.tags["registry.version"] == f"ranker/{manifest.version}"


def test_untracked_runs_touch_no_mlflow_and_a_missing_install_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, tmp_path / "run", None)
    assert tracking.Tracker.start(config, tmp_path / "run", resume=False) is None
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(tracking, "mlflow", None)
    config = _config(tmp_path, tmp_path / "run", f"file:{tmp_path}")
    with pytest.raises(ConfigError, match=r"tracking.mlflow_uri .* pip install 'ranker\[mlflow\]'"):
        tracking.Tracker.start(config, tmp_path / "run", resume=False)


def test_a_resumed_run_continues_its_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    config = _config(tmp_path, tmp_path / "run", uri)
    first = tracking.Tracker.start(config, tmp_path / "run", resume=False)
    assert first is not None
    first.client.set_terminated(first.run_id, "KILLED")
    again = tracking.Tracker.start(config, tmp_path / "run", resume=True)
    assert again is not None and again.run_id == first.run_id
    assert again.client.get_run(again.run_id).info.status == "RUNNING"
    fresh = tracking.Tracker.start(config, tmp_path / "run", resume=False)
    assert fresh is not None and fresh.run_id != first.run_id
    # A tracking server that fails mid-run stops tracking; training is not interrupted.
    fresh.client.delete_run(fresh.run_id)
    fresh.epoch_end({"epoch": 1, "train_loss": {"click": 0.5}, "valid": {}})
    assert not fresh.active
