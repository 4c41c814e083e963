"""Reliability fixtures: the serving fixtures of tests/serving/conftest.py, on a registry exported
from the session's shared tiny training run (tests/conftest.py), so no second model is trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serving.conftest import (
    Built,
    anyio_backend,
    body,
    log_rows,
    own_redis,
    redis_prefix,
    redis_settings,
    registry,
    republish,
    settings,
)

__all__ = [
    "anyio_backend",
    "body",
    "built",
    "log_rows",
    "own_redis",
    "redis_prefix",
    "redis_settings",
    "registry",
    "settings",
]


@pytest.fixture(scope="session")
def built(tiny_log: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """ranker/v0001 exported from the shared tiny run, and v0002 the same graph republished."""
    from training.export import export_run

    registry = tmp_path_factory.mktemp("reliability") / "models"
    assert export_run(tiny_run, registry, "ranker").version == "v0001"
    republish(registry, "v0001")
    return Built(tiny_log, tiny_run, registry)
