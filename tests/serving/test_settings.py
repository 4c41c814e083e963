"""Settings from RANKER_* variables, a secrets directory or a token file (pydantic-settings);
unknown variables warned about by name; unsafe values refused naming the variable."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.app import tune_gc
from serving.settings import CPU, CUDA, Settings, SettingsError


def test_defaults_are_safe() -> None:
    settings = Settings()
    assert settings.check() == []
    assert settings.providers == (CUDA, CPU)
    assert settings.max_candidates == 2000
    assert "admin_token" not in repr(Settings(admin_token="secret-secret-secret"))


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set RANKER_* variables for one test, after clearing any the process has (and no
    /run/secrets of this machine leaks in: tests name their own secrets directory)."""
    for name in list(os.environ):
        if name.upper().startswith("RANKER_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr("serving.settings.DEFAULT_SECRETS_DIR", Path("/nonexistent-secrets"))

    def set_env(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    yield set_env


def test_from_env_reads_and_converts(environ: Callable[..., None]) -> None:
    environ(
        RANKER_REGISTRY="/srv/models",
        RANKER_REDIS_URL="redis://r:6379/2",
        RANKER_ADMIN_TOKEN="t" * 20,
        RANKER_WARMUP_COUNTS="1, 50,200",
        RANKER_PROVIDERS="CPUExecutionProvider",
        RANKER_MAX_CANDIDATES="500",
        RANKER_POLL_INTERVAL_S="0.5",
        RANKER_FREEZE_GC="false",
        RANKER_GC_THRESHOLD="20000",
        RANKER_IMPRESSION_LOG="none",
        RANKER_PORT=" 9000 ",
        RANKER_LOG_FORMAT="text",
        UNRELATED="x",
    )
    settings = Settings.from_env()
    assert settings.registry == Path("/srv/models")
    assert settings.redis_url == "redis://r:6379/2"
    assert settings.admin_token == "t" * 20
    assert settings.warmup_counts == (1, 50, 200)
    assert settings.providers == (CPU,)
    assert settings.max_candidates == 500 and settings.poll_interval_s == 0.5
    assert settings.freeze_gc is False and settings.impression_log is None
    assert settings.gc_threshold == 20_000
    assert settings.port == 9000 and settings.log_format == "text"
    assert Settings.from_env(port=1).port == 1
    assert settings.experiments_key == "ranker:experiments"
    assert settings.check() == []
    # dataclasses.replace validates like the constructor
    assert replace(settings, port="7").port == 7 and settings.replace(port=8).port == 8


def test_from_env_reads_a_given_mapping_not_the_process(environ: Callable[..., None]) -> None:
    environ(RANKER_PORT="9001", RANKER_REDIS_URL="redis://process:6379/0")
    settings = Settings.from_env({"RANKER_PORT": "9002", "ranker_max_candidates": "10"})
    assert settings.port == 9002 and settings.max_candidates == 10
    assert settings.redis_url is None  # the process's variables are not read
    assert Settings.from_env().port == 9001


def test_an_empty_token_is_read_and_refused(environ: Callable[..., None]) -> None:
    environ(RANKER_ADMIN_TOKEN="")
    with pytest.raises(SettingsError, match="RANKER_ADMIN_TOKEN: an empty token"):
        Settings.from_env().check()


def test_unknown_variables_are_warned_about_by_name(environ: Callable[..., None]) -> None:
    environ(RANKER_REGISTY="/srv/models", RANKER_ZZZ="1", RANKER_PORT="9000")
    settings = Settings.from_env()
    assert settings.registry == Path("models") and settings.port == 9000  # the typo is ignored
    warnings = settings.check()
    assert warnings == [
        "RANKER_REGISTY is not a setting and is ignored; did you mean RANKER_REGISTRY?",
        "RANKER_ZZZ is not a setting and is ignored",
    ]


def test_admin_token_from_a_file(environ: Callable[..., None], tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s" * 24 + "\n")  # as `echo` writes it
    environ(RANKER_ADMIN_TOKEN_FILE=str(secret), RANKER_ENVIRONMENT="production")
    settings = Settings.from_env()
    assert settings.admin_token == "s" * 24 and settings.check() == [
        "production without RANKER_REDIS_URL: experiments come from a file"
    ]
    environ(RANKER_ADMIN_TOKEN="other-token-0123456789")
    with pytest.raises(SettingsError, match="RANKER_ADMIN_TOKEN and RANKER_ADMIN_TOKEN_FILE"):
        Settings.from_env()


def test_missing_token_file_names_the_variable(
    environ: Callable[..., None], tmp_path: Path
) -> None:
    environ(RANKER_ADMIN_TOKEN_FILE=str(tmp_path / "absent"))
    with pytest.raises(SettingsError, match=r"RANKER_ADMIN_TOKEN_FILE: cannot read .*absent"):
        Settings.from_env()


def test_secrets_directory(environ: Callable[..., None], tmp_path: Path) -> None:
    """Docker/Kubernetes secrets: a file named like the variable (any case) in the directory;
    a variable in the environment wins over it."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "ranker_admin_token").write_text("from-the-secrets-dir-0123\n")
    (secrets / "RANKER_REDIS_URL").write_text("redis://secret:6379/0")
    environ(RANKER_SECRETS_DIR=str(secrets), RANKER_REDIS_URL="redis://env:6379/0")
    settings = Settings.from_env()
    assert settings.admin_token == "from-the-secrets-dir-0123"
    assert settings.redis_url == "redis://env:6379/0"
    assert settings.check() == []  # RANKER_SECRETS_DIR is a known variable
    assert Settings.from_env(secrets_dir=secrets).admin_token == "from-the-secrets-dir-0123"
    environ(RANKER_SECRETS_DIR=str(tmp_path / "nope"))
    with pytest.raises(SettingsError, match=r"RANKER_SECRETS_DIR: .*nope is not a directory"):
        Settings.from_env()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RANKER_MAX_CANDIDATES", "many"),
        ("RANKER_FREEZE_GC", "maybe"),
        ("RANKER_WARMUP_COUNTS", "1,x"),
        ("RANKER_ENVIRONMENT", "staging"),
        ("RANKER_LOG_FORMAT", "xml"),
        ("RANKER_PORT", "80.5"),
    ],
)
def test_unreadable_values_name_the_variable(
    environ: Callable[..., None], variable: str, value: str
) -> None:
    environ(**{variable: value})
    with pytest.raises(SettingsError, match=f"^{variable}: cannot read"):
        Settings.from_env()


def test_constructor_checks_types() -> None:
    with pytest.raises(ValidationError, match="port"):
        Settings(port="x")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="shoe_size"):
        Settings(shoe_size=44)  # type: ignore[call-arg]


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


@pytest.mark.parametrize("variable", ["RANKER_BATCH_MAX_REQUESTS", "RANKER_BATCH_MAX_DELAY_US"])
def test_negative_batching_values_are_refused_by_name(
    environ: Callable[..., None], variable: str
) -> None:
    environ(**{variable: "-1"})
    with pytest.raises(SettingsError, match=f"^{variable}: must be >= 0 .*got -1"):
        Settings.from_env().check()


def test_batching_is_off_by_default_and_on_above_one_request() -> None:
    assert not Settings().batching
    assert not Settings(batch_max_requests=1).batching
    on = Settings(batch_max_requests=16, batch_max_delay_us=500)
    assert on.batching and on.check() == []
