"""Optional MLflow tracking (`pip install 'ranker[mlflow]'`, config `tracking.mlflow_uri`).

The trainer calls a `Tracker` at three points: `start` (the flattened config as params),
`epoch_end` (train losses and validation metrics, step = epoch) and `finish` (final valid/test
metrics, the plots and metrics.json as artifacts). The MLflow run id is kept in the run
directory (`mlflow_run.json`), so `--resume` continues the same run and `ranker export` (or a
retraining run) attaches the ONNX model, manifest and model card and tags the registry version.

The MlflowClient API is used rather than mlflow's global active run, so nothing leaks between
runs in one process. A tracking failure after the start is logged and tracking stops: a flaky
tracking server never costs a training run. A `file:` store on MLflow 3 needs
MLFLOW_ALLOW_FILE_STORE=true (MLflow's own switch); a server URI (`http://...`) does not.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

try:
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
except ImportError:  # the `mlflow` extra is optional
    mlflow = None  # type: ignore[assignment]

from training.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"
# MLflow names allow letters, digits, `_ - . / ` and spaces; `ndcg@10` becomes `ndcg_10`.
_BAD = re.compile(r"[^A-Za-z0-9_\-./ ]")
# Values longer than MLflow's param limit are cut (a long model.config mapping).
_PARAM_CHARS = 6000
_BATCH = 100


def _name(key: str) -> str:
    return _BAD.sub("_", key)


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {"train": {"epochs": 3}} -> {"train.epochs": 3}."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _numbers(doc: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {
        _name(k): float(v)
        for k, v in flatten(doc, prefix).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


class Tracker:
    """One MLflow run for one training run directory."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.active = True

    @classmethod
    def start(cls, config: TrainConfig, run_dir: Path, resume: bool) -> Tracker | None:
        """The run's tracker, or None when `tracking.mlflow_uri` is unset. A resumed run
        continues its MLflow run; errors here stop training before it starts."""
        uri = config.tracking.mlflow_uri
        if uri is None:
            return None
        if mlflow is None:
            raise ConfigError(
                "tracking.mlflow_uri is set but mlflow is not installed: "
                "pip install 'ranker[mlflow]'"
            )
        client = MlflowClient(tracking_uri=uri)
        record = run_dir / RUN_FILE
        if resume and record.is_file():
            run_id = json.loads(record.read_text())["run_id"]
            client.update_run(run_id, status="RUNNING")
            return cls(client, run_id)
        name = config.tracking.experiment
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        run = client.create_run(experiment_id, run_name=run_dir.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(
            json.dumps(
                {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run.info.run_id}
            )
            + "\n"
        )
        tracker = cls(client, run.info.run_id)
        params = [
            Param(_name(k), json.dumps(v) if not isinstance(v, str) else v)
            for k, v in flatten(config.to_dict()).items()
        ]
        for chunk in range(0, len(params), _BATCH):
            batch = [Param(p.key, p.value[:_PARAM_CHARS]) for p in params[chunk : chunk + _BATCH]]
            client.log_batch(run.info.run_id, params=batch)
        return tracker

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for chunk in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[chunk : chunk + _BATCH])

    def _guard(self, what: str, action: Any) -> None:
        if not self.active:
            return
        try:
            action()
        except Exception as exc:  # a tracking server error must not end training
            self.active = False
            log.warning("mlflow tracking stopped at %s: %s", what, exc)

    def epoch_end(self, entry: Mapping[str, Any]) -> None:
        """One history entry: {"epoch", "train_loss": {task: v}, "valid": {task: {metric: v}}}."""
        values = {
            **_numbers(entry.get("train_loss", {}), "train_loss."),
            **_numbers(entry.get("valid", {}), "valid."),
        }
        self._guard("epoch end", lambda: self._metrics(values, int(entry["epoch"])))

    def finish(self, run_dir: Path, doc: Mapping[str, Any]) -> None:
        """Final metrics of the best epoch, the plots and metrics.json; the run ends FINISHED."""

        def act() -> None:
            final = {
                **_numbers(doc.get("valid") or {}, "best.valid."),
                **_numbers(doc.get("test") or {}, "best.test."),
                "best_epoch": float(doc.get("best_epoch") or 0),
            }
            self._metrics(final, int(doc.get("epochs_run") or 0))
            for path in sorted(run_dir.glob("*.png")):
                self.client.log_artifact(self.run_id, str(path), "plots")
            self.client.log_artifact(self.run_id, str(run_dir / "metrics.json"))
            self.client.set_terminated(self.run_id, "FINISHED")

        self._guard("finish", act)


def log_export(run_dir: Path, version_dir: Path, files: Iterable[str]) -> None:
    """Attach a published registry version to its training run's MLflow run (when the run was
    tracked): its files under `registry/<name>/<version>/` and a `registry.version` tag."""
    record = run_dir / RUN_FILE
    if not record.is_file():
        return
    if mlflow is None:
        log.warning("%s: run was tracked in MLflow, but mlflow is not installed here", record)
        return
    info = json.loads(record.read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    ref = f"{version_dir.parent.name}/{version_dir.name}"
    try:
        for name in files:
            client.log_artifact(info["run_id"], str(version_dir / name), f"registry/{ref}")
        client.set_tag(info["run_id"], "registry.version", ref)
    except Exception as exc:  # the version is published; tracking is a side record
        log.warning("mlflow: cannot attach %s to run %s: %s", ref, info["run_id"], exc)
