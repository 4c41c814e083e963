"""A seed ensemble: several runs of one configuration, published as one ONNX graph that averages
their predictions.

Runs that differ only in `train.seed` (initial weights, batch order) differ as much as runs on
different simulated worlds. On the quality benchmark's three worlds the average of three such
runs beat each of them on every headline metric: over one run, 0.9-1.5 points of captured click
AUC and 1.5-4.4 of the regressions' captured RMSE on the test days (docs/results.md, "How much of
the gap is variance").
The price is every member's forward pass per request, so it is an export option, not a default.

Members are averaged in natural units, each with its own calibration under drift (what each
would serve alone): the mean of unbiased estimates of E[watch seconds] is one. Members must share
the feature spec (with its fitted statistics), the tasks and their losses, and the data window;
an export that mixes anything else is refused, naming the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ranker.features import FeatureEncoder
from ranker.models.ensemble import MeanOfModels
from ranker.registry import Manifest, Publication, publish
from ranker.schema import FeatureSpec
from training.data import encode_log, read_log
from training.evaluate import evaluate_predictions, predict
from training.export import (
    BEST,
    ExportError,
    check_parity,
    exporter_record,
    held_out_rows,
    read_run,
    to_onnx,
)


def export_ensemble(
    run_dirs: Sequence[str | Path],
    registry_root: str | Path,
    name: str,
    *,
    opset: int = 18,
    parity_rows: int = 512,
    tolerance: float = 1e-4,
    parent: str | None = None,
    data_paths: Sequence[str | Path] | None = None,
    batched: bool = False,
) -> Manifest:
    """Average the runs' best models into one graph, check it against PyTorch, evaluate it on
    the validation and test days, and publish it as the next version of `name`."""
    dirs = [Path(d) for d in run_dirs]
    runs = [read_run(d, d / BEST) for d in dirs]
    state = runs[0][0]
    check_members(dirs, [run[0] for run in runs])
    model = MeanOfModels([run[2] for run in runs]).eval()
    spec = FeatureSpec.from_yaml(state["spec_yaml"], str(dirs[0] / BEST))
    split = state["split"]
    config = state["config"]["data"]
    paths = list(data_paths) if data_paths is not None else list(config["paths"])
    drop = bool(config.get("drop_invalid"))
    rows = held_out_rows(paths, spec, list(split["test"] or split["valid"]), parity_rows, drop)
    if rows.rows < 2:
        raise ExportError(f"{paths}: fewer than 2 held-out rows for the parity check")
    model_bytes = to_onnx(model, {k: v[:2] for k, v in rows.inputs.items()}, opset, batched=batched)
    parity = check_parity(model_bytes, model, rows, tolerance)
    metrics: dict[str, Any] = {
        "best_epoch": [run[0]["epoch"] for run in runs],
        "members": [
            {"run": str(d), "valid": run[1].get("valid")} for d, run in zip(dirs, runs, strict=True)
        ],
    }
    for part in ("valid", "test"):
        if split[part]:
            metrics[part] = evaluate_days(model, paths, spec, split[part], drop)
    encoder = FeatureEncoder(spec)
    publication = Publication(
        feature_spec=spec.to_dict(),
        tasks=[t.to_dict() for t in model.tasks],
        inputs={g: encoder.input_names(g) for g in ("user", "item")},
        outputs=list(model.task_names),
        opset=opset,
        data_window={k: list(split[k]) for k in ("train", "valid", "test")},
        metrics=metrics,
        parent=parent,
        model_kind=MeanOfModels.kind,
        hparams=model.hparams(),
        exporter=exporter_record(tolerance, parity, members=[str(d) for d in dirs]),
        batched=batched,
    )
    return publish(registry_root, name, model_bytes, publication)


def check_members(dirs: Sequence[Path], states: Sequence[Mapping[str, Any]]) -> None:
    """Refuse runs that do not make one model: another feature spec (or its fitted statistics),
    other tasks or losses, another data window."""
    first = states[0]
    for run_dir, state in zip(dirs[1:], states[1:], strict=True):
        for key, what in (
            ("spec_yaml", "feature spec"),
            ("split", "data window (train / valid / test days)"),
        ):
            if state[key] != first[key]:
                raise ExportError(f"{run_dir}: its {what} differs from {dirs[0]}'s")
        if state["hparams"]["tasks"] != first["hparams"]["tasks"]:
            raise ExportError(f"{run_dir}: its tasks or losses differ from {dirs[0]}'s")


def evaluate_days(
    model: nn.Module, paths: Sequence[str | Path], spec: FeatureSpec, days: list[str], drop: bool
) -> dict[str, dict[str, float]]:
    """Every metric of the averaged predictions on `days` (with the oracle's where the log has it),
    as served: a position-debiased run's own metrics are taken at the served positions instead."""
    data = encode_log(
        read_log(list(paths), spec, drop_invalid=drop, days=days), FeatureEncoder(spec)
    )
    return evaluate_predictions(predict(model, data), data)
