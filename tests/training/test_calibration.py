"""Calibration under drift: per-day offsets, the trend read at the serving day, the shift in the
model's forward, best.pt, load_best and the exported graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ranker.models.calibration import OutputCalibration
from ranker.registry import model_path
from ranker.tasks import build_tasks
from sim.simulate import SimulatorConfig, simulate
from tests.conftest import tiny_overrides
from training.calibration import day_offset, fit_drift
from training.checkpoint import BEST, load_best
from training.config import ConfigError, load_config
from training.data import day_number
from training.export import export_run, held_out_rows
from training.prepare import prepare_data
from training.trainer import Trainer

TASKS = build_tasks()


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_a_days_offset_makes_the_shifted_mean_equal_the_label_mean() -> None:
    rng = np.random.default_rng(0)
    preds = rng.uniform(0.05, 0.6, 5000).astype(np.float32)
    labels = (rng.uniform(size=5000) < 0.4).astype(np.float32)
    offset = day_offset("logit", preds, labels)
    assert offset is not None
    shifted = OutputCalibration({"click": ("logit", offset)})({"click": torch.from_numpy(preds)})
    assert float(shifted["click"].double().mean()) == pytest.approx(labels.mean(), abs=1e-5)
    seconds = rng.exponential(20.0, 5000)
    offset = day_offset("scale", np.full(5000, 10.0), seconds)
    assert offset == pytest.approx(np.log(seconds.mean() / 10.0))
    # Undefined: no clicks at all, or no rows.
    assert day_offset("logit", preds, np.zeros(5000)) is None
    assert day_offset("scale", np.zeros(0), np.zeros(0)) is None


def test_the_trend_is_recovered_and_read_at_the_target_day() -> None:
    """A model that predicts the average level, labels whose logit (or log mean) rises by
    `slope` a day: the fitted slope is the drift and the offset is the line at the target."""
    rng = np.random.default_rng(1)
    base, slope, rows, first = 0.3, 0.05, 40_000, 20_000
    days = np.repeat(np.arange(first, first + 10), rows)
    step = (days - first).astype(np.float64)
    click = rng.uniform(size=days.size) < 1 / (1 + np.exp(-(_logit(base) + slope * (step - 4.5))))
    watch = rng.exponential(10.0 * np.exp(slope * (step - 4.5)))
    preds = {"click": np.full(days.size, base), "watch_time": np.full(days.size, 10.0)}
    labels = {"click": click.astype(np.float32), "watch_time": watch}
    target = first + 12
    fits = fit_drift(TASKS[:2], days, preds, labels, target)
    for task in ("click", "watch_time"):
        fit = fits[task]
        assert fit.kind == ("logit" if task == "click" else "scale")
        assert fit.days == tuple(range(first, first + 10)) and fit.target_day == target
        assert fit.slope == pytest.approx(slope, abs=0.01), task
        assert fit.offset == pytest.approx(slope * (12 - 4.5), abs=0.05), task
        assert fit.offset == pytest.approx(fit.intercept + fit.slope * target)


def test_few_days_fit_a_constant_and_undefined_days_are_skipped() -> None:
    days = np.repeat([5, 6], 1000)
    preds = {"click": np.full(2000, 0.2), "completion": np.full(2000, 0.2)}
    clicks = np.zeros(2000, dtype=np.float32)
    clicks[:300] = 1  # day 5: 30% clicked; day 6: none (undefined, skipped)
    labels = {"click": clicks, "completion": np.zeros(2000, dtype=np.float32)}
    fits = fit_drift((TASKS[0], TASKS[2]), days, preds, labels, 9)
    assert "completion" not in fits  # no usable day: left as it is
    click = fits["click"]
    assert click.days == (5,) and click.slope == 0.0
    assert click.offset == pytest.approx(_logit(0.3) - _logit(0.2), abs=1e-6)


def test_the_shift_is_the_identity_without_offsets_and_checks_its_tasks() -> None:
    outputs = {"click": torch.tensor([0.0, 0.2, 1.0]), "watch_time": torch.tensor([0.0, 5.0, 9.0])}
    assert OutputCalibration()(outputs) is outputs
    shifted = OutputCalibration({"click": ("logit", 0.5), "watch_time": ("scale", np.log(2.0))})(
        outputs
    )
    assert torch.allclose(shifted["watch_time"], outputs["watch_time"] * 2)
    odds = shifted["click"][1] / (1 - shifted["click"][1])
    assert float(odds) == pytest.approx(0.25 * np.exp(0.5), rel=1e-5)
    assert torch.all((shifted["click"] > 0) & (shifted["click"] < 1))  # clamped, never 0 or 1
    with pytest.raises(ValueError, match="unknown tasks"):
        OutputCalibration.for_tasks(TASKS, {"dwell": 0.1})
    with pytest.raises(ValueError, match="unknown shift"):
        OutputCalibration({"click": ("probit", 0.1)})


def test_config_refuses_an_unknown_mode_and_streaming() -> None:
    with pytest.raises(ConfigError, match=r"calibration\.drift: must be none or trend"):
        load_config(None, ["calibration.drift=linear"])
    with pytest.raises(ConfigError, match=r"calibration\.drift: the streaming path"):
        load_config(None, ["calibration.drift=trend", "data.stream=true"])


@pytest.fixture(scope="module")
def drift_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("drift_log")
    config = SimulatorConfig(
        users=200, items=600, authors=60, days=6, requests_per_day=120, oracle=True
    )
    simulate(config, out)
    return out


def test_a_calibrated_run_stores_applies_and_exports_its_offsets(
    drift_log: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    config = load_config(None, tiny_overrides(drift_log, run, "calibration.drift=trend"))
    data = prepare_data(config)
    Trainer(config, data, run, progress=False).fit()
    doc = json.loads((run / "metrics.json").read_text())
    split = data.split
    assert len(split.train) == 4
    newest = day_number(split.test[-1])
    offsets = {}
    for task in ("click", "watch_time", "completion"):
        fit = doc["calibration"][task]
        assert fit["days"] == [day_number(d) for d in split.train], task
        assert fit["target_day"] == newest + 1
        offsets[task] = fit["offset"]
    stored = torch.load(run / BEST, weights_only=True)["calibration"]
    assert stored == pytest.approx(offsets, abs=1e-6)
    model = load_best(run / BEST)
    assert model.calibration.offsets == stored

    # The forward applies the shift; the exported graph carries it.
    rows = held_out_rows(list(config.data.paths), data.spec, split.test, 256, False)
    feeds = {k: torch.from_numpy(v) for k, v in rows.inputs.items()}
    with torch.no_grad():
        calibrated = model(feeds)
        model.calibration = OutputCalibration()
        plain = model(feeds)
    expected = OutputCalibration.for_tasks(model.tasks, stored)(plain)
    for task in model.task_names:
        assert torch.allclose(calibrated[task], expected[task], atol=1e-6), task
    registry = tmp_path / "models"
    manifest = export_run(run, registry, "ranker")
    session = ort.InferenceSession(
        model_path(registry, "ranker", manifest.version), providers=["CPUExecutionProvider"]
    )
    got = dict(zip(manifest.outputs, session.run(None, rows.inputs), strict=True))
    for task in model.task_names:
        np.testing.assert_allclose(got[task], calibrated[task].numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got["click"], plain["click"].numpy(), rtol=1e-4, atol=1e-5)
    assert manifest.metrics["calibration"] == doc["calibration"]  # the manifest says what it holds


def test_an_uncalibrated_run_has_no_offsets(tiny_run: Path) -> None:
    assert "calibration" not in json.loads((tiny_run / "metrics.json").read_text())
    assert "calibration" not in torch.load(tiny_run / BEST, weights_only=True)
    assert load_best(tiny_run / BEST).calibration.offsets == {}
