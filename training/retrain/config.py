"""The retraining job's configuration: frozen dataclasses filled from YAML, RANKER_* variables
and `key=value` overrides (in that order), checked before any data is read; errors name the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ranker.registry import RegistryError, list_versions
from training.config import ConfigError, TrainConfig, apply_overrides, build, plain, validate
from training.retrain.gate import GateConfig

# The service's variable names, so one environment configures both (read after the YAML file,
# before command-line overrides).
ENV_KEYS = {
    "RANKER_REGISTRY": "registry",
    "RANKER_REDIS_URL": "experiments.redis_url",
    "RANKER_REDIS_PREFIX": "experiments.redis_prefix",
    "RANKER_EXPERIMENTS_FILE": "experiments.file",
}


@dataclass(frozen=True)
class RetrainData:
    # Log directories or files (Parquet/CSV); replaces the training config's data.paths.
    paths: tuple[str, ...] = ("out/demo/data",)


@dataclass(frozen=True)
class RolloutConfig:
    # replace: the default arm serves the new version. treatment: layer `layer` gets one variant
    # `variant` serving it on `share` of `buckets` (the layer is replaced if present).
    mode: str = "replace"
    share: float = 0.1
    layer: str = "retrain"
    variant: str = "candidate"
    buckets: int = 100


@dataclass(frozen=True)
class ExperimentsSection:
    # Redis of the service (env RANKER_REDIS_URL); the config lives at `<redis_prefix>:experiments`.
    redis_url: str | None = None
    redis_prefix: str = "ranker"
    # Experiment config YAML of the service (env RANKER_EXPERIMENTS_FILE); used only without Redis.
    file: str | None = "out/demo/experiments.yaml"


@dataclass(frozen=True)
class LockConfig:
    # auto: Redis when experiments.redis_url is set, else a lock file.
    backend: str = "auto"
    # Redis key; default `<redis_prefix>:retrain:<model_name>:lock`.
    key: str | None = None
    # Lock file; default `<registry>/.retrain-<model_name>.lock`.
    file: str | None = None
    # A holder that stops renewing (killed, paused) loses the lock after this many seconds.
    ttl_s: float = 600.0


@dataclass(frozen=True)
class RetrainConfig:
    # The production training config (a path in the YAML, relative to the retrain config's
    # directory, or inline). Its data.paths, split and `out` are set by the retraining run.
    train: TrainConfig = field(default_factory=TrainConfig)
    data: RetrainData = field(default_factory=RetrainData)
    # Newest days used: the newest is the gate day, the one before validates, the rest train.
    window_days: int = 7
    # Model registry root (env RANKER_REGISTRY) and the model's name in it.
    registry: str = "out/demo/models"
    model_name: str = "ranker"
    gate: GateConfig = field(default_factory=GateConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    experiments: ExperimentsSection = field(default_factory=ExperimentsSection)
    lock: LockConfig = field(default_factory=LockConfig)
    # Each run trains in runs_dir/<run id>/ and reports to report_dir/<run id>/.
    runs_dir: str = "out/retrain/runs"
    report_dir: str = "out/retrain/reports"
    # Run directories kept (newest first); None keeps all.
    keep_runs: int | None = 3

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = plain(dataclasses.asdict(self))
        return doc


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return doc


def load_retrain_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> RetrainConfig:
    """YAML file (or defaults), then RANKER_* variables, then `key=value` overrides; validated."""
    doc: dict[str, Any] = _read_yaml(Path(path), "retrain config") if path is not None else {}
    train = doc.get("train")
    if isinstance(train, str):
        # Inlined first, so `train.train.epochs=1` style overrides reach it.
        base = Path(path).parent if path is not None else Path()
        doc["train"] = _read_yaml(base / train, "training config (key 'train')")
    env = os.environ if environ is None else environ
    from_env = []
    for variable, key in ENV_KEYS.items():
        if variable in env:
            raw = env[variable].strip()
            # JSON text is YAML, so the value stays a string (or null) whatever it looks like.
            value = None if raw.lower() in ("", "none", "null") else raw
            from_env.append(f"{key}={json.dumps(value)}")
    config: RetrainConfig = build(
        RetrainConfig, apply_overrides(apply_overrides(doc, from_env), overrides)
    )
    check(config)
    return config


def check(config: RetrainConfig) -> None:
    """Every check that needs no data, so a bad value stops the run before training."""
    try:
        validate(config.train)
    except ConfigError as exc:
        raise ConfigError(f"train.{exc}") from None
    if not config.data.paths:
        raise ConfigError("data.paths: name at least one log directory or file")
    if config.window_days < 3:
        raise ConfigError(
            f"window_days: must be >= 3 (train, validation and gate day), got {config.window_days}"
        )
    try:
        list_versions(config.registry, config.model_name)
    except RegistryError as exc:
        raise ConfigError(f"model_name: {exc}") from None
    config.gate.validate(config.train.tasks.names)
    rollout = config.rollout
    if rollout.mode not in ("replace", "treatment"):
        raise ConfigError(f"rollout.mode: must be replace or treatment, got {rollout.mode!r}")
    if rollout.buckets < 1:
        raise ConfigError(f"rollout.buckets: must be >= 1, got {rollout.buckets}")
    if not 0 < rollout.share <= 1 or round(rollout.share * rollout.buckets) < 1:
        raise ConfigError(
            f"rollout.share: must be in (0, 1] and cover at least one of {rollout.buckets} "
            f"buckets, got {rollout.share}"
        )
    if not config.experiments.redis_url and not config.experiments.file:
        raise ConfigError(
            "experiments: set redis_url or file (where the service reads its experiment config)"
        )
    if config.lock.backend not in ("auto", "redis", "file"):
        raise ConfigError(f"lock.backend: must be auto, redis or file, got {config.lock.backend!r}")
    if config.lock.backend == "redis" and not config.experiments.redis_url:
        raise ConfigError("lock.backend: redis needs experiments.redis_url")
    if config.lock.ttl_s <= 0:
        raise ConfigError(f"lock.ttl_s: must be > 0, got {config.lock.ttl_s}")
    if config.keep_runs is not None and config.keep_runs < 1:
        raise ConfigError(f"keep_runs: must be >= 1 or null, got {config.keep_runs}")


def candidate_config(config: RetrainConfig, run_dir: Path) -> TrainConfig:
    """The production training config on the retraining window, into a fresh run directory."""
    data = dataclasses.replace(
        config.train.data,
        paths=config.data.paths,
        valid_days=1,
        test_days=1,
        window_days=config.window_days - 2,
    )
    return dataclasses.replace(config.train, data=data, out=str(run_dir))
