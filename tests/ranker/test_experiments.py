"""Experiment configs: field-named validation, assignment, ramp-ups only add users, layers independent."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ranker.experiments import ExperimentConfig, ExperimentError, ModelRef

USERS = range(20_000)


def doc(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": 3,
        "salt": "exp",
        "default": {
            "model": {"name": "ranker", "version": "v0001"},
            "score": {"weights": {"click": 1.0}},
        },
        "layers": [
            {
                "name": "models",
                "buckets": 100,
                "variants": [
                    {"name": "new_model", "buckets": [0, 10], "model": {"name": "ranker", "version": "v0002"}}
                ],
            },
            {
                "name": "weights",
                "buckets": 100,
                "variants": [
                    {"name": "watch", "buckets": [0, 50], "score": {"weights": {"click": 1.0, "watch_time": 0.5}}},
                    {"name": "control", "buckets": [50, 100], "score": {"weights": {"click": 1.0}}},
                ],
            },
        ],
    }  # fmt: skip
    base.update(overrides)
    return base


def with_span(start: int, end: int) -> ExperimentConfig:
    d = doc()
    d["layers"][0]["variants"][0]["buckets"] = [start, end]
    return ExperimentConfig.from_dict(d)


def test_parse_json_and_yaml_round_trip() -> None:
    config = ExperimentConfig.from_dict(doc())
    assert ExperimentConfig.parse(config.to_json()) == config
    assert (
        ExperimentConfig.parse(
            "version: 3\nsalt: exp\ndefault: {model: {name: ranker, version: v0001}}"
        ).version
        == 3
    )
    assert config.model_refs() == [ModelRef("ranker", "v0001"), ModelRef("ranker", "v0002")]


def test_assignment_resolves_the_arm_per_layer() -> None:
    config = ExperimentConfig.from_dict(doc())
    seen = set()
    for user in range(2000):
        a = config.assign(user)
        (models, m_bucket, m_variant), (weights, w_bucket, w_variant) = a.layers
        assert (models, weights) == ("models", "weights")
        assert (m_variant == "new_model") == (m_bucket < 10)
        assert a.model.version == ("v0002" if m_variant else "v0001")
        assert w_variant == ("watch" if w_bucket < 50 else "control")
        assert ("watch_time" in a.score.weights) == (w_variant == "watch")
        assert a.label == f"models={m_variant or '-'},weights={w_variant}"
        seen.add(a.label)
        assert config.assign(user) == a  # deterministic
    assert len(seen) == 4


def test_ramping_a_variant_up_only_adds_users() -> None:
    spans = [(0, 1), (0, 5), (0, 10), (0, 50), (0, 100)]
    previous: set[int] = set()
    for start, end in spans:
        config = with_span(start, end)
        treated = {u for u in USERS if config.assign(u).layers[0][2] == "new_model"}
        assert previous <= treated
        assert abs(len(treated) / len(USERS) - (end - start) / 100) < 0.02
        previous = treated
    # ... and other layers do not move while one ramps
    small, large = with_span(0, 1), with_span(0, 60)
    assert all(small.assign(u).layers[1] == large.assign(u).layers[1] for u in range(3000))


def test_layers_are_independent() -> None:
    config = ExperimentConfig.from_dict(doc())
    assigned = [config.assign(u) for u in USERS]
    in_models = [a.layers[0][2] == "new_model" for a in assigned]
    in_watch = [a.layers[1][2] == "watch" for a in assigned]
    share_watch = sum(in_watch) / len(USERS)
    share_watch_given_model = sum(w for m, w in zip(in_models, in_watch, strict=True) if m) / sum(
        in_models
    )
    assert abs(share_watch - 0.5) < 0.02
    assert abs(share_watch_given_model - share_watch) < 0.04


def test_salt_change_reshuffles() -> None:
    a, b = ExperimentConfig.from_dict(doc()), ExperimentConfig.from_dict(doc(salt="other"))
    moved = sum(a.assign(u).layers[0][1] != b.assign(u).layers[0][1] for u in range(1000))
    assert moved > 900


def _set(path: list[Any], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(doc())
    target: Any = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ([1, 2], "config"),
        (doc(extra=1), "config.extra"),
        (doc(version=0), "version"),
        (doc(version="3"), "version"),
        (doc(salt=""), "salt"),
        (doc(default="x"), "default"),
        (doc(default={"score": {}}), "default.model"),
        (doc(default={"model": {"name": "ranker"}}), "default.model"),
        (doc(default={"model": {"name": "r", "version": "v1", "x": 1}}), "default.model.x"),
        (doc(default={"model": {"name": "r", "version": "v1"}, "score": {"weights": {"click": -1}}}), "default.score.weights.click"),
        (doc(layers={}), "layers"),
        (doc(layers=[1]), "layers[0]"),
        (doc(layers=[{"buckets": 2}]), "layers[0].name"),
        (_set(["layers", 0, "buckets"], 0), "layers.models.buckets"),
        (_set(["layers", 0, "variants"], []), "layers.models.variants"),
        (_set(["layers", 0, "variants", 0, "buckets"], [5, 200]), "layers.models.new_model.buckets"),
        (_set(["layers", 0, "variants", 0, "buckets"], [5, 5]), "layers.models.new_model.buckets"),
        (_set(["layers", 0, "variants", 0, "model"], {"name": "r"}), "layers.models.new_model.model"),
        (_set(["layers", 0, "variants", 0, "extra"], 1), "layers.models.new_model.extra"),
        (_set(["layers", 1, "variants", 1, "buckets"], [40, 100]), "layers.weights"),
        (_set(["layers", 1, "variants", 1, "name"], "watch"), "layers.weights.variants"),
        (_set(["layers", 1, "name"], "models"), "layers"),
        (_set(["layers", 1, "variants", 0, "score"], {"formula": "max"}), "layers.weights.watch.score.formula"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_field(document: Any, field: str) -> None:
    with pytest.raises(ExperimentError) as info:
        ExperimentConfig.from_dict(document)
    assert str(info.value).startswith(f"{field}:"), str(info.value)


def test_variant_must_change_something() -> None:
    with pytest.raises(ExperimentError, match=r"^layers.models.new_model: a variant must set"):
        ExperimentConfig.from_dict(
            _set(["layers", 0, "variants", 0], {"name": "new_model", "buckets": [0, 1]})
        )


def test_check_models_names_missing_models_and_tasks() -> None:
    config = ExperimentConfig.from_dict(doc())
    with pytest.raises(ExperimentError, match="ranker/v0002: not in the model registry"):
        config.check_models(lambda ref: ref.version == "v0001")
    with pytest.raises(ExperimentError, match=r"^layers.weights.watch.score: weights.watch_time"):
        config.check_models(lambda ref: True, lambda ref: ["click"])
    config.check_models(lambda ref: True, lambda ref: ["click", "watch_time"])
