"""Session fixtures shared by every test folder: one tiny simulated log, one tiny trained run and
one registry holding its export. Read-only by convention: a test that changes files copies first."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.simulate import SimulatorConfig, simulate

TINY = SimulatorConfig(users=200, items=600, authors=60, days=4, requests_per_day=80, oracle=True)


def tiny_overrides(log: Path, run_dir: Path, *extra: str) -> list[str]:
    """Config overrides for a seconds-long training run on the tiny log."""
    return [
        f"data.paths=[{log}]",
        f"out={run_dir}",
        "train.epochs=2",
        "train.batch_size=256",
        "train.max_steps_per_epoch=4",
        "train.threads=1",
        "model.config.num_experts=3",
        "model.config.expert_units=[16]",
        "model.config.tower_units=[8]",
        "model.config.embedding_dim=4",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_log")
    simulate(TINY, out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained MMoE run directory (best.pt, checkpoint.pt, metrics.json)."""
    from training.config import load_config
    from training.trainer import Trainer, prepare_data

    run = tmp_path_factory.mktemp("tiny_run")
    config = load_config(None, tiny_overrides(tiny_log, run))
    Trainer(config, prepare_data(config), run, progress=False).fit()
    return run


@pytest.fixture(scope="session")
def tiny_registry(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry root with the tiny run exported as ranker/v0001."""
    from training.export import export_run

    registry = tmp_path_factory.mktemp("tiny_registry")
    export_run(tiny_run, registry, "ranker")
    return registry


@pytest.fixture(scope="session")
def tiny_model(tiny_registry: Path) -> Path:
    """The version directory of the tiny exported model."""
    return tiny_registry / "ranker" / "v0001"
