"""Feature encoding: stable hashing, shapes, defaults, and row-alone == row-in-batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranker.features import (
    FeatureEncoder,
    Ragged,
    fit_dense_stats,
    hash_categorical,
    hash_multi_categorical,
    hash_value,
    mix64,
    mix64_int,
)
from ranker.schema import Feature, SpecError, load_default_spec, spec_of


def test_hash_values_are_pinned() -> None:
    # A change of hash silently re-buckets every trained embedding: pin it.
    assert hash_value(7, "f") == 7191089600892374487
    assert hash_value("ios", "f") == hash_value(np.str_("ios"), "f")
    assert int(mix64(np.array([0], dtype=np.int64))[0]) == 16294208416658607535


def test_integer_spellings_are_one_category() -> None:
    expected = hash_value(7, "f")
    for value in (7, np.int32(7), 7.0, "7", np.float32(7.0)):
        assert hash_value(value, "f") == expected
    assert hash_value("007", "f") != expected  # not the canonical spelling: plain text
    assert hash_value(-3, "f") == hash_value("-3", "f")


def test_column_types_agree() -> None:
    ints = np.array([1, 5, 5, 42, -7])
    expected = hash_categorical(ints, 1000, "f")
    assert (hash_categorical(ints.astype(np.float64), 1000, "f") == expected).all()
    assert (hash_categorical([str(i) for i in ints], 1000, "f") == expected).all()
    assert (hash_categorical(pa.array(ints), 1000, "f") == expected).all()
    strings = ["ios", "web", None, "ios"]
    from_list = hash_categorical(strings, 64, "f", default="web")
    assert (hash_categorical(pa.array(strings), 64, "f", default="web") == from_list).all()
    assert from_list[2] == from_list[1]  # missing takes the default


def test_missing_values_take_default() -> None:
    values = np.array([1.0, np.nan, 3.0])
    out = hash_categorical(values, 100, "f", default="1")
    assert out[1] == out[0]
    nullable = pa.array([1, None, 3])
    assert (hash_categorical(nullable, 100, "f", default="1") == out).all()


def test_wrong_type_names_feature() -> None:
    with pytest.raises(SpecError, match="'device'"):
        hash_categorical([{"a": 1}], 8, "device")
    with pytest.raises(SpecError, match="'device'"):
        hash_categorical([[1, 2]], 8, "device")
    spec = load_default_spec()
    encoder = FeatureEncoder(spec)
    with pytest.raises(SpecError, match="'duration'"):
        encoder.encode_group("item", {"duration": ["long"]}, 1)
    with pytest.raises(SpecError, match="'tags'"):
        encoder.encode_group("item", {"tags": [5]}, 1)


def test_encoder_layout() -> None:
    spec = load_default_spec()
    encoder = FeatureEncoder(spec)
    assert encoder.input_names("user") == ["user_cat"]
    assert encoder.input_names("item") == ["item_cat", "item_multi", "item_dense"]
    out = encoder.encode_group(
        "item",
        {"item_id": [1, 2], "tags": [[3, 4, 5, 6, 7, 8], None], "duration": [9.0, None]},
        2,
    )
    assert out["item_cat"].shape == (2, 3) and out["item_cat"].dtype == np.int64
    multi = out["item_multi"]
    assert multi.shape == (2, 4)
    assert (multi[0] > 0).all()  # truncated to max_len, no padding
    assert (multi[1] == 0).all()  # missing list -> all padding
    assert multi.max() <= spec["tags"].buckets
    dense = out["item_dense"]
    assert dense.dtype == np.float32
    assert dense[0, 0] == pytest.approx(np.log1p(9.0))
    assert dense[1, 0] == pytest.approx(np.log1p(30.0))  # the spec's default duration
    cat = out["item_cat"]
    assert (
        (cat >= 0) & (cat < np.array([f.buckets for f in spec.select("item", "categorical")]))
    ).all()


def test_multi_categorical_input_forms_agree() -> None:
    feature = Feature(name="tag", side="item", kind="multi_categorical", buckets=50, max_len=3)
    encoder = FeatureEncoder(spec_of([feature]))
    as_lists = encoder.encode_group("item", {"tag": [[12, 65], [], None, [1, 2, 3, 4]]}, 4)
    as_text = encoder.encode_group("item", {"tag": ["12,65", "", None, "1,2,3,4"]}, 4)
    as_arrow = encoder.encode_group(
        "item", {"tag": pa.array([[12, 65], [], None, [1, 2, 3, 4]])}, 4
    )
    for other in (as_text, as_arrow):
        assert (other["item_multi"] == as_lists["item_multi"]).all()


def test_log1p_is_sign_preserving() -> None:
    feature = Feature(name="x", side="item", kind="dense", transform="log1p")
    out = FeatureEncoder(spec_of([feature])).encode_group("item", {"x": [-3.0, 0.0, 3.0]}, 3)
    assert out["item_dense"][:, 0] == pytest.approx([-np.log1p(3), 0.0, np.log1p(3)])


def test_fit_dense_stats() -> None:
    spec = load_default_spec()
    fitted = fit_dense_stats(
        spec, {"duration": [1.0, 3.0, 7.0], "upload_age_days": [0.0, 0.0, 0.0]}
    )
    logs = np.log1p([1.0, 3.0, 7.0])
    assert fitted["duration"].stats.mean == pytest.approx(logs.mean())
    assert fitted["duration"].stats.std == pytest.approx(logs.std())
    assert (
        fitted["upload_age_days"].stats.std == 1.0
    )  # constant column: unit scale, no division by 0
    with pytest.raises(SpecError, match="'upload_age_days'"):
        fit_dense_stats(spec, {"duration": [1.0]})


_SCALAR = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=False),
)
_ROW = st.fixed_dictionaries(
    {
        "user_id": _SCALAR,
        "device": _SCALAR,
        "hour": st.integers(0, 23),
        "item_id": _SCALAR,
        "tags": st.one_of(st.none(), st.lists(st.integers(-5, 5000), max_size=6)),
        "duration": st.one_of(st.none(), st.floats(min_value=0.1, max_value=1e4)),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=12))
def test_encoding_is_deterministic_and_row_independent(rows: list[dict]) -> None:
    encoder = FeatureEncoder(load_default_spec())
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    batch = encoder.encode(columns, len(rows))
    again = encoder.encode(columns, len(rows))
    for i, row in enumerate(rows):
        alone = encoder.encode({name: [value] for name, value in row.items()}, 1)
        for name, array in batch.items():
            assert (again[name] == array).all()
            np.testing.assert_array_equal(alone[name][0], array[i])


@pytest.mark.parametrize("low", [0, -500, 10**12])
def test_dense_range_shortcut_equals_hashing_every_row(low: int) -> None:
    rng = np.random.default_rng(low % 97)
    ints = rng.integers(low, low + 300, 5000)  # fewer distinct values than rows: the shortcut
    direct = (mix64(ints) % np.uint64(997)).astype(np.int64)
    np.testing.assert_array_equal(hash_categorical(ints, 997, "f"), direct)
    spec = spec_of([Feature(name="f", side="item", kind="categorical", buckets=997)])
    encoded = FeatureEncoder(spec).encode_group("item", {"f": ints}, len(ints))["item_cat"][:, 0]
    np.testing.assert_array_equal(encoded, direct)


def test_scalar_mix_equals_the_vectorised_one() -> None:
    rng = np.random.default_rng(3)
    ints = np.concatenate(
        [rng.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64), [0, -1, 2**63 - 1, -(2**63)]]
    ).astype(np.int64)
    assert [mix64_int(int(v)) for v in ints] == mix64(ints).tolist()


@pytest.mark.parametrize(
    "column",
    [
        np.array([7, -3, 2**63 - 1], dtype=np.int64),
        np.array([7.0, 2.5, np.nan]),
        np.array(["ios", "7", ""], dtype=object),
        pa.array([5, None, 9], type=pa.int64()),
        pa.array(["a", None, "7"]),
        [True, None, 1.5],
    ],
    ids=["int64", "float", "object", "arrow int", "arrow text", "list"],
)
def test_one_row_categorical_equals_the_column_path(column: Any) -> None:
    spec = spec_of([Feature(name="f", side="user", kind="categorical", buckets=1009)])
    encoder = FeatureEncoder(spec)
    batch = encoder.encode_group("user", {"f": column}, 3)["user_cat"]
    for i in range(3):
        alone = encoder.encode_group("user", {"f": column[i : i + 1]}, 1)["user_cat"]
        assert alone.dtype == np.int64 and alone.shape == (1, 1)
        assert alone[0, 0] == batch[i, 0], i


def test_ragged_columns_encode_like_lists() -> None:
    rows = [[3, 9, 3], None, [], [2**40, -5, 7, 8, 9, 10, 11, 12, 13], [1]]
    spec = load_default_spec()
    feature = spec["tags"]
    ragged = Ragged.of_int_lists(rows)
    assert len(ragged) == 5 and ragged.lengths.tolist() == [3, 0, 0, 9, 1]
    expected = hash_multi_categorical(rows, feature)
    np.testing.assert_array_equal(hash_multi_categorical(ragged, feature), expected)
    arrow = pa.array(rows, type=pa.list_(pa.int64()))
    np.testing.assert_array_equal(hash_multi_categorical(arrow, feature), expected)
    np.testing.assert_array_equal(hash_multi_categorical(arrow.slice(1), feature), expected[1:])
