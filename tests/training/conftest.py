"""Shared fixtures: one tiny simulated log per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.simulate import SimulatorConfig, simulate

TINY = SimulatorConfig(users=200, items=600, authors=60, days=4, requests_per_day=80, oracle=True)


@pytest.fixture(scope="session")
def tiny_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_log")
    simulate(TINY, out)
    return out


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
def tiny_model(tiny_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained MMoE published to a fresh registry: returns its version directory."""
    from training.config import load_config
    from training.export import export_run
    from training.trainer import Trainer, prepare_data

    run = tmp_path_factory.mktemp("tiny_run")
    config = load_config(
        None, tiny_overrides(tiny_log, run, "train.epochs=1", "train.max_steps_per_epoch=20")
    )
    Trainer(config, prepare_data(config), run, progress=False).fit()
    registry = tmp_path_factory.mktemp("registry")
    manifest = export_run(run, registry, "ranker")
    return registry / "ranker" / manifest.version
