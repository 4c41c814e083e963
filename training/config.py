"""Training configuration: frozen dataclasses that YAML files and `key=value` overrides fill.

Every error names the key path (`train.batch_size`, `model.config.num_experts`) and, for unknown
keys, lists the valid ones. Model and balancer fields are checked against their own builders.

Over 400 lines on purpose: the sections (with a comment per field, which `ranker config schema`
turns into descriptions), the generic loader that fills them and the checks are one contract,
read together when a field is added.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ranker.models.aux_heads import AuxConfig

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    # Log directories or files (Parquet/CSV).
    paths: tuple[str, ...] = ("out/demo/data",)
    # Feature spec YAML; None: the simulator's spec shipped with ranker.
    spec: str | None = None
    # Time split: the last `test_days` days test, the `valid_days` before them validate.
    valid_days: int = 1
    test_days: int = 1
    # Use only the newest `window_days` days before the split (None: all days).
    window_days: int | None = None
    # Drop and count invalid rows instead of failing.
    drop_invalid: bool = False
    # Stream the log row group by row group (Parquet only) instead of loading it whole: for logs
    # larger than memory; memory is bounded by the shuffle buffer (training/stream.py).
    stream: bool = False
    # Rows mixed in the streaming shuffle buffer.
    shuffle_buffer_rows: int = 262_144


@dataclass(frozen=True)
class ModelSection:
    # Architecture: shared_bottom, mmoe or ple.
    kind: str = "mmoe"
    # Fields of the architecture's config dataclass (see ranker.models).
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TasksConfig:
    # Tasks in output order.
    names: tuple[str, ...] = ("click", "watch_time", "completion")
    # task -> loss name (e.g. watch_time: log_mse or mse).
    losses: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BalancerConfig:
    # Loss-balancing method (ranker.balancing.BALANCERS).
    name: str = "ew"
    # Constructor parameters of the method.
    params: Mapping[str, Any] = field(default_factory=dict)
    # Where per-task gradients are taken: `representation` (cheap, MGDA-UB style) or `parameters`.
    gradients: str = "representation"


@dataclass(frozen=True)
class OptimizerConfig:
    # Learning rate of the shared part (embeddings, experts, gates).
    lr: float = 1e-3
    # Per-task learning rates (tower + auxiliary head); default `lr`.
    task_lr: Mapping[str, float] = field(default_factory=dict)
    # Weight decay of the dense layers (SparseAdam on the embedding tables has none).
    weight_decay: float = 0.0
    # Row-sparse embedding gradients + SparseAdam (only the rows a batch reads are updated);
    # false: dense gradients and Adam on the tables too (every row, every step).
    sparse_embeddings: bool = True
    # L2 penalty on the embeddings a batch reads: embedding_l2 * mean squared norm of a row's
    # field embeddings, added to the loss outside the balancer (0: off).
    embedding_l2: float = 0.0
    # The same penalty on the tables of the factor terms (model.config.factor_rank > 0).
    factor_l2: float = 0.0
    # How both penalties charge an id: 0 once per read (each impression), 1 once per id (a prior
    # per id: each read weighted by the feature's mean count / the id's count in the training
    # days, ranker.models.id_prior); in between, that weight to this power.
    l2_per_id: float = 0.0
    # Clip the global gradient norm (0: off).
    clip_norm: float = 0.0


@dataclass(frozen=True)
class TrainLoop:
    epochs: int = 3
    batch_size: int = 2048
    seed: int = 0
    # Stop early after this many epochs without a better early-stopping score (0: never).
    patience: int = 2
    # Early-stopping metric: `score` (mean of click AUC and the regression tasks' normalised scores),
    # `loss` (sum of the tasks' validation losses) or a metric key such as `click.auc` or
    # `click.loss` (training.evaluate.metric_keys lists them).
    early_stopping: str = "score"
    # Stop each epoch after this many steps (None: the whole epoch); for quick runs.
    max_steps_per_epoch: int | None = None
    # torch threads (None: torch's default).
    threads: int | None = None
    # Validate, keep and export an exponential moving average of the model's weights, updated
    # after every step with this decay (torch.optim.swa_utils.AveragedModel); 0: the last step's
    # weights. 0.99 averages over ~100 steps.
    ema_decay: float = 0.0
    # Training forward precision: float32, or bfloat16 mixed precision (matrix products in
    # bfloat16; weights, gradients, optimiser state and losses float32; about 2x faster matrix
    # products on CPUs with AVX-512 BF16 or AMX, and on GPUs). Evaluation and export: float32.
    precision: str = "float32"
    # Under torchrun: all-reduce the dense gradients bucket by bucket while the backward runs
    # (training/grad_reducer.py); false: one all-reduce after the backward. Same sums either way.
    overlap_allreduce: bool = True
    # Size of one all-reduce bucket in MiB when overlap_allreduce is on: small enough that the
    # experts' gradients (a few MB) span several buckets, or nothing starts before the end.
    bucket_mb: float = 1.0


@dataclass(frozen=True)
class DebiasConfig:
    # Position debiasing (ranker.models.position): `pal` fits P(seen | position) x the model's
    # output once seen, in training only (the log needs a `position` column); `none`: off.
    position: str = "none"
    # Positions from this one on share one examination estimate.
    max_positions: int = 64
    # Learning rate of the position tower: one parameter per position, read by every row; at the
    # model's rate it moves too little in a few hundred steps to take the position effect over
    # from the features.
    lr: float = 0.05


@dataclass(frozen=True)
class CalibrationConfig:
    # Calibration under drift (training/calibration.py): `trend` shifts each task's predictions
    # by a line fitted through the training days' offsets, read `horizon_days` after the newest
    # day of the data (train, validation and test days); `none`: off.
    drift: str = "none"
    horizon_days: int = 1


@dataclass(frozen=True)
class TrackingConfig:
    # MLflow tracking URI (`http://mlflow:5000`, `file:/path`); None: no tracking. Needs the
    # `mlflow` extra (training/tracking.py).
    mlflow_uri: str | None = None
    # MLflow experiment the runs go to (created when missing).
    experiment: str = "ranker"


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    # Self-auxiliary heads: the model library's own config (ranker.models.AuxConfig), so its
    # fields and checks are written once; form `none` (the default here) trains without heads.
    aux: AuxConfig = field(default_factory=lambda: AuxConfig(form="none"))
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainLoop = field(default_factory=TrainLoop)
    debias: DebiasConfig = field(default_factory=DebiasConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Run directory (checkpoints, metrics.json, plots).
    out: str = "runs/latest"

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))


def plain(value: Any) -> Any:
    """Mappings and tuples as plain dicts and lists (for YAML/JSON)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


def build(cls: type, doc: Any, path: str = "", base: Any = None) -> Any:
    """Fill dataclass `cls` from a mapping, checking keys and types; errors name the key path.
    `base`: the instance whose values the mapping overrides (a section's field default)."""
    where = path or "config"
    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(doc).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(doc) - set(names))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{key}: unknown key; valid keys here: {names}")
    values = {}
    for name in names:
        if name in doc:
            key = f"{path}.{name}" if path else name
            if dataclasses.is_dataclass(hints[name]):
                default = _section_default(cls, name)
                values[name] = build(hints[name], doc[name], key, default)
            else:
                values[name] = _convert(hints[name], doc[name], key)
    try:
        if base is not None:  # a section fills in over its field's default, not its class's
            return dataclasses.replace(base, **values)
        return cls(**values)
    except ValueError as exc:  # the dataclass's own checks (e.g. ranker.models.AuxConfig)
        raise ConfigError(f"{where}: {exc}") from None


def _section_default(cls: type, name: str) -> Any:
    """The default instance of dataclass field `name` of `cls`, when it is a section."""
    spec = {f.name: f for f in dataclasses.fields(cls)}[name]
    if spec.default_factory is dataclasses.MISSING:
        return None
    default = spec.default_factory()
    return default if dataclasses.is_dataclass(default) else None


def _convert(kind: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        return build(kind, value, key)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            value = [value] if isinstance(value, str) else value
        if not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or kind is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        value_kind = args[1] if args else Any
        return {str(k): _convert(value_kind, v, f"{key}.{k}") for k, v in value.items()}
    if kind is Any:
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {kind}")


def apply_overrides(doc: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a config document."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}") from None
        node = doc
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return doc


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (or defaults when None), apply overrides, validate."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    doc = apply_overrides(doc, overrides)
    for note in drop_foreign_params(doc):
        logger.warning("note: %s", note)
    config = build(TrainConfig, doc)
    validate(config)
    return config


def drop_foreign_params(doc: dict[str, Any]) -> list[str]:
    """Remove, in place, `model.config` fields that belong to another architecture and
    `balancer.params` that belong to another balancer; one note per removed key.

    So switching `model.kind` or `balancer.name` on a config written for another one is one key
    (configs/train.yaml sets MMoE fields). A key no architecture or balancer knows stays,
    and `validate` names it.
    """
    from ranker.balancing import BALANCERS, balancer_params
    from ranker.models import MODELS

    notes: list[str] = []
    sections = (
        (
            "model",
            "kind",
            "config",
            ModelSection().kind,
            {k: _fields(m.config_class) for k, m in MODELS.items()},
        ),
        (
            "balancer",
            "name",
            "params",
            BalancerConfig().name,
            {k: balancer_params(k) for k in BALANCERS},
        ),
    )
    for section, selector, part, default, known in sections:
        node = doc.get(section)
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            continue
        chosen = node.get(selector, default)
        if chosen not in known:
            continue  # validate names the unknown kind
        for key in list(node[part]):
            owners = [name for name, names in known.items() if key in names]
            if key not in known[chosen] and owners:
                del node[part][key]
                notes.append(
                    f"{section}.{part}.{key} dropped: a parameter of {', '.join(owners)}, "
                    f"not of {section}.{selector}={chosen}"
                )
    return notes


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def validate(config: TrainConfig) -> None:
    """Checks that need the model, task and balancer registries (before any data is read);
    one function per section, the first error raised names its key."""
    _check_model(config.model)
    _check_balancer(config.balancer)
    _check_optimizer(config.optimizer, config.tasks.names)
    unknown_aux = sorted(set(config.aux.tasks or ()) - set(config.tasks.names))
    if unknown_aux:
        raise ConfigError(
            f"aux.tasks: unknown tasks {unknown_aux}; tasks: {list(config.tasks.names)}"
        )
    _check_debias(config.debias, config.data)
    _check_calibration(config.calibration, config.data)
    _check_loop(config.train, config.tasks.names)
    _check_data(config.data)


def _check_model(model: ModelSection) -> None:
    from ranker.models import MODELS

    if model.kind not in MODELS:
        raise ConfigError(f"model.kind: unknown model {model.kind!r}; valid: {sorted(MODELS)}")
    valid_fields = [f.name for f in dataclasses.fields(MODELS[model.kind].config_class)]
    for name in model.config:
        if name not in valid_fields:
            raise ConfigError(
                f"model.config.{name}: unknown {model.kind} field; valid: {valid_fields}"
            )
    try:  # values too, at load time rather than when the model is built after the data
        MODELS[model.kind].config_class(**model.config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.config: {exc}") from None


def _check_balancer(balancer: BalancerConfig) -> None:
    from ranker.balancing import BALANCERS, balancer_params

    method = balancer.name
    if method not in BALANCERS:
        raise ConfigError(f"balancer.name: unknown balancer {method!r}; valid: {list(BALANCERS)}")
    for name in balancer.params:
        if name not in balancer_params(method):
            raise ConfigError(
                f"balancer.params.{name}: unknown parameter of {method!r}; valid: {balancer_params(method)}"
            )
    if balancer.gradients not in ("representation", "parameters"):
        raise ConfigError(
            f"balancer.gradients: must be 'representation' or 'parameters', got {balancer.gradients!r}"
        )


def _check_optimizer(optimizer: OptimizerConfig, tasks: Sequence[str]) -> None:
    if optimizer.embedding_l2 < 0:
        raise ConfigError(f"optimizer.embedding_l2: must be >= 0, got {optimizer.embedding_l2}")
    if optimizer.factor_l2 < 0:
        raise ConfigError(f"optimizer.factor_l2: must be >= 0, got {optimizer.factor_l2}")
    if not 0 <= optimizer.l2_per_id <= 1:
        raise ConfigError(f"optimizer.l2_per_id: must be in [0, 1], got {optimizer.l2_per_id}")
    if optimizer.lr <= 0:
        raise ConfigError(f"optimizer.lr: must be > 0, got {optimizer.lr}")
    for task, lr in optimizer.task_lr.items():
        if task not in tasks:
            raise ConfigError(f"optimizer.task_lr.{task}: unknown task; tasks: {list(tasks)}")
        if lr <= 0:
            raise ConfigError(f"optimizer.task_lr.{task}: must be > 0, got {lr}")


def _check_debias(debias: DebiasConfig, data: DataConfig) -> None:
    if debias.position not in ("none", "pal"):
        raise ConfigError(f"debias.position: must be none or pal, got {debias.position!r}")
    if debias.position != "none" and data.stream:
        raise ConfigError("debias.position: the streaming path (data.stream) reads no positions")
    if debias.lr <= 0:
        raise ConfigError(f"debias.lr: must be > 0, got {debias.lr}")
    if debias.max_positions < 2:
        raise ConfigError(f"debias.max_positions: must be >= 2, got {debias.max_positions}")


def _check_calibration(calibration: CalibrationConfig, data: DataConfig) -> None:
    if calibration.drift not in ("none", "trend"):
        raise ConfigError(f"calibration.drift: must be none or trend, got {calibration.drift!r}")
    if calibration.drift != "none" and data.stream:
        raise ConfigError(
            "calibration.drift: the streaming path (data.stream) keeps no training predictions "
            "to fit it on; set calibration.drift=none"
        )
    if calibration.horizon_days < 0:
        raise ConfigError(f"calibration.horizon_days: must be >= 0, got {calibration.horizon_days}")


def _check_loop(loop: TrainLoop, tasks: Sequence[str]) -> None:
    for key, value in (("train.epochs", loop.epochs), ("train.batch_size", loop.batch_size)):
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    if loop.precision not in ("float32", "bfloat16"):
        raise ConfigError(
            f"train.precision: must be 'float32' or 'bfloat16', got {loop.precision!r}"
        )
    if loop.bucket_mb <= 0:
        raise ConfigError(f"train.bucket_mb: must be > 0, got {loop.bucket_mb}")
    if not 0.0 <= loop.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: must be in [0, 1), got {loop.ema_decay}")
    from training.evaluate import metric_keys

    keys = metric_keys(tasks)
    if loop.early_stopping not in keys:
        raise ConfigError(
            f"train.early_stopping: unknown metric {loop.early_stopping!r}; valid: {keys}"
        )


def _check_data(data: DataConfig) -> None:
    if data.shuffle_buffer_rows < 1:
        raise ConfigError(f"data.shuffle_buffer_rows: must be >= 1, got {data.shuffle_buffer_rows}")
    if data.valid_days < 1 or data.test_days < 0:
        raise ConfigError("data.valid_days must be >= 1 and data.test_days >= 0")
