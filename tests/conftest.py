"""Session fixtures shared by every test folder: one tiny simulated log, one tiny trained run and
one registry holding its export. Read-only by convention: a test that changes files copies first."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sim.simulate import SimulatorConfig, simulate

_BLOCK_TORCH = """
import importlib.abc, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, BlockTorch())
"""
_NO_TORCH_LOADED = """
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok")
"""


def assert_runs_without_torch(code: str) -> None:
    """Run `code` in a fresh interpreter where importing torch fails; it must pass and leave no
    torch module loaded (the serving image carries no torch)."""
    script = _BLOCK_TORCH + code + _NO_TORCH_LOADED
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix on the real Redis at 127.0.0.1:6379 (which must answer: fail, never
    skip); every key under it is deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is not answering ({exc}); these tests need it")
    prefix = f"ranker-test-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


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
        "aux.bottleneck_units=4",  # a self-aux head must be smaller than its tower
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
    from training.prepare import prepare_data
    from training.trainer import Trainer

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
def tiny_batched_registry(
    tiny_registry: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny registry plus ranker/v0002: the same run exported as the batched graph."""
    from training.export import export_run

    registry = tmp_path_factory.mktemp("tiny_batched") / "models"
    shutil.copytree(tiny_registry, registry)
    export_run(tiny_run, registry, "ranker", batched=True)
    return registry


@pytest.fixture(scope="session")
def tiny_model(tiny_registry: Path) -> Path:
    """The version directory of the tiny exported model."""
    return tiny_registry / "ranker" / "v0001"
