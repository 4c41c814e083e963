"""Feature spec: YAML round trip and validation errors that name the feature."""

from __future__ import annotations

import pytest

from ranker.schema import DenseStats, FeatureSpec, SpecError, load_default_spec


def test_default_spec_loads_and_round_trips() -> None:
    spec = load_default_spec()
    assert spec.names[0] == "user_id"
    assert {f.group for f in spec.features} == {"user", "item"}
    again = FeatureSpec.from_yaml(spec.to_yaml())
    assert again == spec


def test_stats_round_trip_and_fitted_flag() -> None:
    spec = load_default_spec()
    assert not spec.is_fitted
    fitted = spec.with_stats(
        {"duration": DenseStats(3.0, 1.2), "upload_age_days": DenseStats(1.0, 0.5)}
    )
    assert fitted.is_fitted
    assert FeatureSpec.from_yaml(fitted.to_yaml()) == fitted


def _doc(**overrides: object) -> dict:
    feature = {"name": "device", "side": "user", "kind": "categorical", "buckets": 8}
    feature.update(overrides)
    return {"version": 1, "features": [feature]}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"side": "page"}, "side must be one of"),
        ({"kind": "text"}, "kind must be one of"),
        ({"buckets": 1}, "'buckets' must be >= 2"),
        ({"kind": "multi_categorical", "max_len": 0}, "'max_len' must be >= 1"),
        ({"kind": "dense", "transform": "sqrt"}, "transform must be one of"),
        ({"colour": "red"}, "unknown keys ['colour']"),
        ({"kind": "dense", "stats": {"mean": 0.0, "std": 0.0}}, "std > 0"),
        ({"kind": "dense", "default": "abc"}, "'default' must be a number"),
    ],
)
def test_invalid_feature_names_the_feature(overrides: dict, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        FeatureSpec.from_dict(_doc(**overrides))
    assert "device" in str(info.value)
    assert fragment in str(info.value)


def test_duplicate_and_label_names_rejected() -> None:
    doc = _doc()
    doc["features"].append(dict(doc["features"][0]))
    with pytest.raises(SpecError, match="'device': defined twice"):
        FeatureSpec.from_dict(doc)
    with pytest.raises(SpecError, match="label or oracle column"):
        FeatureSpec.from_dict(_doc(name="click"))


def test_bad_documents(tmp_path) -> None:
    with pytest.raises(SpecError, match="non-empty list"):
        FeatureSpec.from_dict({"version": 1, "features": []})
    with pytest.raises(SpecError, match="unsupported spec version"):
        FeatureSpec.from_dict({"version": 9, "features": [_doc()["features"][0]]})
    bad = tmp_path / "spec.yaml"
    bad.write_text("features: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        FeatureSpec.load(bad)
    with pytest.raises(SpecError, match="cannot read"):
        FeatureSpec.load(tmp_path / "missing.yaml")


def test_unknown_stats_feature_rejected() -> None:
    with pytest.raises(SpecError, match="unknown or non-dense"):
        load_default_spec().with_stats({"device": DenseStats(0.0, 1.0)})
