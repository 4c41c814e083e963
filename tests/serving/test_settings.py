"""Settings from RANKER_* variables; unsafe values refused naming the variable."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.app import tune_gc
from serving.settings import CPU, CUDA, Settings, SettingsError


def test_defaults_are_safe() -> None:
    settings = Settings()
    assert settings.check() == []
    assert settings.providers == (CUDA, CPU)
    assert settings.max_candidates == 2000
    assert "admin_token" not in repr(Settings(admin_token="secret-secret-secret"))


def test_from_env_reads_and_converts() -> None:
    env = {
        "RANKER_REGISTRY": "/srv/models",
        "RANKER_REDIS_URL": "redis://r:6379/2",
        "RANKER_ADMIN_TOKEN": "t" * 20,
        "RANKER_WARMUP_COUNTS": "1, 50,200",
        "RANKER_PROVIDERS": "CPUExecutionProvider",
        "RANKER_MAX_CANDIDATES": "500",
        "RANKER_POLL_INTERVAL_S": "0.5",
        "RANKER_FREEZE_GC": "false",
        "RANKER_GC_THRESHOLD": "20000",
        "RANKER_IMPRESSION_LOG": "none",
        "RANKER_PORT": "9000",
        "UNRELATED": "x",
    }
    settings = Settings.from_env(env)
    assert settings.registry == Path("/srv/models")
    assert settings.redis_url == "redis://r:6379/2"
    assert settings.warmup_counts == (1, 50, 200)
    assert settings.providers == (CPU,)
    assert settings.max_candidates == 500 and settings.poll_interval_s == 0.5
    assert settings.freeze_gc is False and settings.impression_log is None
    assert settings.gc_threshold == 20_000
    assert settings.port == 9000
    assert Settings.from_env(env, port=1).port == 1
    assert settings.experiments_key == "ranker:experiments"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"RANKER_MAX_CANDIDATES": "many"}, "RANKER_MAX_CANDIDATES"),
        ({"RANKER_FREEZE_GC": "maybe"}, "RANKER_FREEZE_GC"),
        ({"RANKER_WARMUP_COUNTS": "1,x"}, "RANKER_WARMUP_COUNTS"),
    ],
)
def test_unreadable_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        (Settings(admin_token=""), "RANKER_ADMIN_TOKEN"),
        (Settings(admin_token="   "), "RANKER_ADMIN_TOKEN"),
        (Settings(environment="production", admin_token="short"), "RANKER_ADMIN_TOKEN"),
        (Settings(environment="staging"), "RANKER_ENVIRONMENT"),  # type: ignore[arg-type]
        (Settings(max_candidates=0), "RANKER_MAX_CANDIDATES"),
        (Settings(max_body_bytes=10), "RANKER_MAX_BODY_BYTES"),
        (Settings(warmup_counts=(1, 5000)), "RANKER_WARMUP_COUNTS"),
        (Settings(poll_interval_s=0), "RANKER_POLL_INTERVAL_S"),
        (Settings(intra_op_threads=-1), "RANKER_INTRA_OP_THREADS"),
        (Settings(providers=()), "RANKER_PROVIDERS"),
        (Settings(gc_threshold=-1), "RANKER_GC_THRESHOLD"),
        (Settings(log_format="xml"), "RANKER_LOG_FORMAT"),  # type: ignore[arg-type]
    ],
)
def test_unsafe_settings_are_refused(settings: Settings, variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        settings.check()


def test_public_bind_without_token_warns() -> None:
    warnings = Settings(host="0.0.0.0").check()
    assert any("admin endpoints are disabled" in w for w in warnings)
    assert Settings(host="0.0.0.0", admin_token="x" * 20).check() == []
    assert Settings(host="::1").check() == []


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_and_raises_only_the_young_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(Settings(freeze_gc=True, gc_threshold=30_000))
    assert gc.get_threshold() == (30_000, 10, 10)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_zero_keeps_pythons_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    frozen = gc.get_freeze_count()
    tune_gc(Settings(freeze_gc=False, gc_threshold=0))
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == frozen
