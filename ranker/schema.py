"""Feature spec: which features a model reads, how each is encoded, and the impression-log contract.

The spec is a versioned YAML document stored in every model manifest, so an artefact always carries
the exact encoding it was trained with. Validation errors name the feature and the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

Side = Literal["user", "context", "item"]
Kind = Literal["categorical", "multi_categorical", "dense"]
Transform = Literal["identity", "log1p"]

SIDES: tuple[Side, ...] = ("user", "context", "item")
KINDS: tuple[Kind, ...] = ("categorical", "multi_categorical", "dense")
TRANSFORMS: tuple[Transform, ...] = ("identity", "log1p")

# Impression-log columns every log must carry (DESIGN.md, "Impression log").
ID_COLUMNS: tuple[str, ...] = ("request_id", "user_id", "item_id", "ts")
LABEL_COLUMNS: tuple[str, ...] = ("click", "watch_time", "duration")
# Optional ground truth written by the simulator (`--oracle`).
ORACLE_COLUMNS: tuple[str, ...] = ("oracle_click", "oracle_watch_time", "oracle_completion")

SPEC_VERSION = 1


class SpecError(ValueError):
    """A feature spec (or a value checked against it) is invalid; the message names the feature."""


@dataclass(frozen=True)
class DenseStats:
    """Mean and standard deviation of a dense feature after its transform, fitted on training data."""

    mean: float
    std: float


@dataclass(frozen=True)
class Feature:
    """One model input feature."""

    name: str
    side: Side
    kind: Kind
    # Hash buckets for categorical and multi-categorical features (embedding table rows).
    buckets: int = 0
    # Longest list kept for multi-categorical features; longer lists are truncated.
    max_len: int = 0
    # Dense transform applied before standardisation.
    transform: Transform = "identity"
    # Value used when the feature is missing (None / absent / NaN in logs).
    default: str | float = ""
    # Dense standardisation statistics; None until fitted on the training window.
    stats: DenseStats | None = None

    def __post_init__(self) -> None:
        if self.kind == "dense" and self.default == "":
            object.__setattr__(self, "default", 0.0)  # the dense default unless one is given

    @property
    def group(self) -> Literal["user", "item"]:
        """Model input group: user and context features are computed once per request."""
        return "item" if self.side == "item" else "user"


@dataclass(frozen=True)
class FeatureSpec:
    """An ordered list of features; order fixes the column order of the encoded arrays."""

    features: tuple[Feature, ...]
    version: int = SPEC_VERSION
    name: str = "features"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    def __getitem__(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def select(self, group: str, kind: Kind) -> list[Feature]:
        """Features of one input group (`user` = user + context, or `item`) and one kind."""
        return [f for f in self.features if f.group == group and f.kind == kind]

    @property
    def is_fitted(self) -> bool:
        return all(f.stats is not None for f in self.features if f.kind == "dense")

    def with_stats(self, stats: Mapping[str, DenseStats]) -> FeatureSpec:
        """A copy with dense statistics set; names must be dense features of this spec."""
        unknown = sorted(set(stats) - {f.name for f in self.features if f.kind == "dense"})
        if unknown:
            raise SpecError(f"stats given for unknown or non-dense features: {unknown}")
        features = tuple(
            replace(f, stats=stats[f.name]) if f.name in stats else f for f in self.features
        )
        return replace(self, features=features)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "name": self.name, "features": []}
        for f in self.features:
            entry: dict[str, Any] = {"name": f.name, "side": f.side, "kind": f.kind}
            if f.kind != "dense":
                entry["buckets"] = f.buckets
            if f.kind == "multi_categorical":
                entry["max_len"] = f.max_len
            if f.kind == "dense":
                entry["transform"] = f.transform
            entry["default"] = f.default
            if f.stats is not None:
                entry["stats"] = asdict(f.stats)
            out["features"].append(entry)
        if self.extra:
            out["extra"] = dict(self.extra)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "feature spec") -> FeatureSpec:
        if not isinstance(doc, Mapping):
            raise SpecError(
                f"{source}: expected a mapping with 'features', got {type(doc).__name__}"
            )
        version = doc.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise SpecError(
                f"{source}: unsupported spec version {version!r} (expected {SPEC_VERSION})"
            )
        raw = doc.get("features")
        if not isinstance(raw, list) or not raw:
            raise SpecError(f"{source}: 'features' must be a non-empty list")
        unknown_top = sorted(set(doc) - {"version", "name", "features", "extra"})
        if unknown_top:
            raise SpecError(f"{source}: unknown keys {unknown_top}")
        features = tuple(_feature_from_dict(entry, i, source) for i, entry in enumerate(raw))
        return cls(
            features=features,
            version=version,
            name=str(doc.get("name", "features")),
            extra=dict(doc.get("extra") or {}),
        )

    @classmethod
    def from_yaml(cls, text: str, source: str = "feature spec") -> FeatureSpec:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"{source}: not valid YAML: {exc}") from None
        return cls.from_dict(doc, source)

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"{path}: cannot read feature spec: {exc.strerror}") from None
        return cls.from_yaml(text, str(path))


_FEATURE_KEYS = {"name", "side", "kind", "buckets", "max_len", "transform", "default", "stats"}


def _feature_from_dict(entry: Any, index: int, source: str) -> Feature:
    if not isinstance(entry, Mapping):
        raise SpecError(f"{source}: features[{index}] must be a mapping")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{source}: features[{index}] needs a non-empty string 'name'")
    where = f"{source}: feature {name!r}"
    unknown = sorted(set(entry) - _FEATURE_KEYS)
    if unknown:
        raise SpecError(f"{where}: unknown keys {unknown} (valid: {sorted(_FEATURE_KEYS)})")
    kind = entry.get("kind")
    stats = entry.get("stats")
    if stats is not None:
        if not isinstance(stats, Mapping) or set(stats) != {"mean", "std"}:
            raise SpecError(f"{where}: 'stats' must be a mapping with 'mean' and 'std'")
        stats = DenseStats(mean=float(stats["mean"]), std=float(stats["std"]))
    default: str | float
    if kind == "dense":
        default = _as_float(entry.get("default", 0.0), f"{where}: 'default'")
    else:
        default = str(entry.get("default", ""))
    try:
        return Feature(
            name=name,
            side=entry.get("side"),  # type: ignore[arg-type]
            kind=kind,  # type: ignore[arg-type]
            buckets=int(entry.get("buckets", 0)),
            max_len=int(entry.get("max_len", 0)),
            transform=entry.get("transform", "identity"),
            default=default,
            stats=stats,
        )
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: {exc}") from None


def _as_float(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SpecError(f"{where} must be a number, got {value!r}") from None


def _validate(spec: FeatureSpec) -> None:
    seen: set[str] = set()
    for f in spec.features:
        where = f"feature {f.name!r}"
        if f.name in seen:
            raise SpecError(f"{where}: defined twice")
        seen.add(f.name)
        if f.name in LABEL_COLUMNS[:2] or f.name in ORACLE_COLUMNS:
            raise SpecError(f"{where}: a label or oracle column cannot be a feature")
        if f.side not in SIDES:
            raise SpecError(f"{where}: side must be one of {list(SIDES)}, got {f.side!r}")
        if f.kind not in KINDS:
            raise SpecError(f"{where}: kind must be one of {list(KINDS)}, got {f.kind!r}")
        if f.kind in ("categorical", "multi_categorical") and f.buckets < 2:
            raise SpecError(f"{where}: 'buckets' must be >= 2, got {f.buckets}")
        if f.kind == "multi_categorical" and f.max_len < 1:
            raise SpecError(f"{where}: 'max_len' must be >= 1, got {f.max_len}")
        if f.kind == "dense":
            if f.transform not in TRANSFORMS:
                raise SpecError(
                    f"{where}: transform must be one of {list(TRANSFORMS)}, got {f.transform!r}"
                )
            if not math.isfinite(float(f.default)):
                raise SpecError(f"{where}: 'default' must be finite")
            if f.stats is not None and not (
                math.isfinite(f.stats.mean) and math.isfinite(f.stats.std) and f.stats.std > 0
            ):
                raise SpecError(f"{where}: stats must be finite with std > 0, got {f.stats}")


def spec_of(features: Iterable[Feature], name: str = "features") -> FeatureSpec:
    """Build a spec from features (convenience for code and tests)."""
    return FeatureSpec(features=tuple(features), name=name)


def default_spec_path() -> Path:
    """The spec of the simulator's logs, shipped with the package."""
    return Path(__file__).with_name("simulator_spec.yaml")


def load_default_spec() -> FeatureSpec:
    return FeatureSpec.load(default_spec_path())
