"""Experiment config: which model version and score formula serve which users.

A config document (JSON or YAML) has an integer `version`, a `salt`, a `default` arm (model + score)
and layers. Each layer splits users into `buckets` by a stable hash of (salt, layer, user id) and
gives bucket ranges to variants; a variant overrides the model, the score, or both. Layers are
independent: one may test model versions while another tests score weights. Users in no variant of a
layer get the default's value for what that layer would change. Ranges are half-open
[start, end); widening a range only adds users.
"""

from __future__ import annotations

import itertools
import json
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from ranker.bucketing import bucket_of
from ranker.scoring import ScoreError, ScoreFormula


class ExperimentError(ValueError):
    """An invalid experiment config; the message names the field."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class Variant:
    name: str
    start: int
    end: int
    model: ModelRef | None = None
    score: ScoreFormula | None = None


@dataclass(frozen=True)
class Layer:
    name: str
    buckets: int
    variants: tuple[Variant, ...]

    def variant_for(self, bucket: int) -> Variant | None:
        for variant in self.variants:
            if variant.start <= bucket < variant.end:
                return variant
        return None


@dataclass(frozen=True)
class Assignment:
    """Where one user lands: per layer (layer, bucket, variant or None), and the resolved arm."""

    layers: tuple[tuple[str, int, str | None], ...]
    model: ModelRef
    score: ScoreFormula

    @property
    def label(self) -> str:
        """One string naming the user's variants, e.g. `models=treatment,weights=-`."""
        return ",".join(f"{layer}={variant or '-'}" for layer, _, variant in self.layers)


@dataclass(frozen=True)
class ExperimentConfig:
    version: int
    salt: str
    default_model: ModelRef
    default_score: ScoreFormula
    layers: tuple[Layer, ...]

    def assign(self, user_id: str | int) -> Assignment:
        model, formula = self.default_model, self.default_score
        placed = []
        for layer in self.layers:
            bucket = bucket_of(self.salt, layer.name, user_id, layer.buckets)
            variant = layer.variant_for(bucket)
            if variant is not None:
                model = variant.model or model
                formula = variant.score or formula
            placed.append((layer.name, bucket, variant.name if variant else None))
        return Assignment(tuple(placed), model, formula)

    def model_refs(self) -> list[ModelRef]:
        """Every model version the config can serve (default first), without duplicates."""
        refs = [self.default_model]
        for layer in self.layers:
            refs.extend(v.model for v in layer.variants if v.model is not None)
        return list(dict.fromkeys(refs))

    def check_models(
        self,
        exists: Callable[[ModelRef], bool],
        tasks_of: Callable[[ModelRef], Sequence[str]] | None = None,
    ) -> None:
        """Refuse a config naming a model version that is not in the registry (or a formula naming
        a task the model lacks)."""
        for ref in self.model_refs():
            if not exists(ref):
                raise ExperimentError(f"model {ref}: not in the model registry")
        if tasks_of is None:
            return
        arms = [(self.default_model, self.default_score, "default.score")]
        for layer in self.layers:
            for v in layer.variants:
                arms.append(
                    (
                        v.model or self.default_model,
                        v.score or self.default_score,
                        f"layers.{layer.name}.{v.name}.score",
                    )
                )
        for ref, formula, where in arms:
            try:
                formula.check_tasks(tasks_of(ref))
            except ScoreError as exc:
                raise ExperimentError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        def arm(model: ModelRef | None, formula: ScoreFormula | None) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if model is not None:
                out["model"] = {"name": model.name, "version": model.version}
            if formula is not None:
                out["score"] = formula.to_dict()
            return out

        return {
            "version": self.version,
            "salt": self.salt,
            "default": arm(self.default_model, self.default_score),
            "layers": [
                {
                    "name": layer.name,
                    "buckets": layer.buckets,
                    "variants": [
                        {"name": v.name, "buckets": [v.start, v.end], **arm(v.model, v.score)}
                        for v in layer.variants
                    ],
                }
                for layer in self.layers
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def parse(cls, text: str | bytes, source: str = "experiment config") -> ExperimentConfig:
        """From JSON or YAML text."""
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ExperimentError(f"{source}: not valid JSON/YAML: {exc}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> ExperimentConfig:
        if not isinstance(doc, Mapping):
            raise ExperimentError("config: expected a mapping")
        _only(doc, {"version", "salt", "default", "layers"}, "config")
        version = doc.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ExperimentError(f"version: must be an integer >= 1, got {reprlib.repr(version)}")
        salt = doc.get("salt")
        if not isinstance(salt, str) or not salt:
            raise ExperimentError("salt: must be a non-empty string")
        default = doc.get("default")
        if not isinstance(default, Mapping):
            raise ExperimentError("default: must be a mapping with model and score")
        _only(default, {"model", "score"}, "default")
        if "model" not in default:
            raise ExperimentError("default.model: required")
        model = _model(default["model"], "default.model")
        formula = _score(default.get("score", {"weights": {"click": 1.0}}), "default.score")
        layers_doc = doc.get("layers", [])
        if not isinstance(layers_doc, list):
            raise ExperimentError("layers: must be a list")
        layers = tuple(_layer(entry, i) for i, entry in enumerate(layers_doc))
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ExperimentError(f"layers: names must be unique, got {names}")
        return cls(version, salt, model, formula, layers)


def _only(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ExperimentError(f"{where}.{unknown[0]}: unknown field; valid: {sorted(allowed)}")


def _model(doc: Any, where: str) -> ModelRef:
    if not isinstance(doc, Mapping) or not all(
        isinstance(doc.get(k), str) and doc.get(k) for k in ("name", "version")
    ):
        raise ExperimentError(f"{where}: must be a mapping with string 'name' and 'version'")
    _only(doc, {"name", "version"}, where)
    return ModelRef(doc["name"], doc["version"])


def _score(doc: Any, where: str) -> ScoreFormula:
    try:
        return ScoreFormula.from_dict(doc)
    except ScoreError as exc:
        raise ExperimentError(f"{where}.{exc}") from None


def _layer(doc: Any, index: int) -> Layer:
    if not isinstance(doc, Mapping):
        raise ExperimentError(f"layers[{index}]: must be a mapping")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise ExperimentError(f"layers[{index}].name: must be a non-empty string")
    where = f"layers.{name}"
    _only(doc, {"name", "buckets", "variants"}, where)
    buckets = doc.get("buckets", 1000)
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ExperimentError(
            f"{where}.buckets: must be an integer >= 1, got {reprlib.repr(buckets)}"
        )
    variants_doc = doc.get("variants")
    if not isinstance(variants_doc, list) or not variants_doc:
        raise ExperimentError(f"{where}.variants: must be a non-empty list")
    variants = []
    for i, entry in enumerate(variants_doc):
        if (
            not isinstance(entry, Mapping)
            or not isinstance(entry.get("name"), str)
            or not entry["name"]
        ):
            raise ExperimentError(f"{where}.variants[{i}]: must be a mapping with a string 'name'")
        vwhere = f"{where}.{entry['name']}"
        _only(entry, {"name", "buckets", "model", "score"}, vwhere)
        span = entry.get("buckets")
        if (
            not isinstance(span, list)
            or len(span) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in span)
            or not 0 <= span[0] < span[1] <= buckets
        ):
            raise ExperimentError(
                f"{vwhere}.buckets: must be [start, end) with 0 <= start < end <= {buckets}, got {reprlib.repr(span)}"
            )
        if "model" not in entry and "score" not in entry:
            raise ExperimentError(f"{vwhere}: a variant must set a model, a score or both")
        variants.append(
            Variant(
                name=entry["name"],
                start=span[0],
                end=span[1],
                model=_model(entry["model"], f"{vwhere}.model") if "model" in entry else None,
                score=_score(entry["score"], f"{vwhere}.score") if "score" in entry else None,
            )
        )
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ExperimentError(f"{where}.variants: names must be unique, got {names}")
    spans = sorted((v.start, v.end, v.name) for v in variants)
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise ExperimentError(f"{where}: variants {first!r} and {second!r} overlap")
    return Layer(name, buckets, tuple(variants))
