"""Mean-unbiased objectives, end to end: trained with zi_gamma on a simulated log, the mean predicted
watch time and completion on the test days are within 5% of the mean labels (log_mse's is far below).

The world is stationary (no popularity drift, no new items), so the check isolates the objective
from calibration under drift; three test days keep the label mean's own noise near 1%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim.simulate import SimulatorConfig, simulate
from training.checkpoint import BEST, load_best
from training.config import load_config
from training.data import EncodedData
from training.evaluate import predict
from training.prepare import PreparedData, prepare_data
from training.trainer import Trainer

WORLD = SimulatorConfig(
    users=300,
    items=400,
    authors=60,
    days=8,
    requests_per_day=600,
    oracle=True,
    seed=3,
    popularity_walk=0.0,
    new_item_fraction=0.0,
)
RUN = [
    "data.test_days=3",
    "model.config.num_experts=4",
    "model.config.expert_units=[32]",
    "model.config.tower_units=[16]",
    "model.config.embedding_dim=8",
    "model.config.feeds={completion: click}",
    "optimizer.lr=0.003",
    "optimizer.embedding_l2=0.1",
    "train.epochs=8",
    "train.batch_size=1024",
    "train.early_stopping=loss",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreparedData]:
    log = tmp_path_factory.mktemp("objectives_log")
    simulate(WORLD, log)
    data = prepare_data(load_config(None, [f"data.paths=[{log}]", *RUN]))
    assert isinstance(data, PreparedData)
    return log, data


def mean_ratios(log: Path, data: PreparedData, run: Path, loss: str) -> dict[str, float]:
    config = load_config(
        None, [f"data.paths=[{log}]", f"out={run}", *RUN, f"tasks.losses.watch_time={loss}"]
    )
    Trainer(config, data, run, progress=False).fit()
    test: EncodedData = data.test  # type: ignore[assignment]
    preds = predict(load_best(run / BEST), test)
    return {t: float(np.mean(preds[t]) / np.mean(test.labels[t])) for t in preds}


def test_zi_gamma_means_match_the_test_labels(
    prepared: tuple[Path, PreparedData], tmp_path: Path
) -> None:
    ratios = mean_ratios(*prepared, tmp_path, "zi_gamma")
    assert ratios["watch_time"] == pytest.approx(1.0, abs=0.05)
    assert ratios["completion"] == pytest.approx(1.0, abs=0.05)


def test_log_mse_watch_time_mean_is_far_below_the_labels(
    prepared: tuple[Path, PreparedData], tmp_path: Path
) -> None:
    assert mean_ratios(*prepared, tmp_path, "log_mse")["watch_time"] < 0.5
