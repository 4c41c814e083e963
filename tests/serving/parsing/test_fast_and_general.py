"""The typed fast path changes speed, never answers: it agrees with the general path on any body."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranker.features import Ragged
from serving.columns import item_columns, user_columns
from serving.errors import ApiError
from serving.models import FieldKinds
from serving.parsing import RankRequest, RequestParser
from serving.parsing.fast import FastDecoder
from serving.parsing.general import parse_general
from tests.serving.parsing.test_fuzz import BASE, ENCODER, FIELDS, KINDS, edited, json_values

FAST = FastDecoder(KINDS.item)
MORE_FIELDS = [
    *FIELDS,
    ("candidates", 0, "author_id"),
    ("candidates", 1, "tags"),
    ("candidates", 2, "duration"),
    ("context",),
    ("top_k",),
]


INT64 = st.integers(-(2**63), 2**63 - 1)
# Values the typed decoder accepts somewhere: about 40% of the examples take the fast path.
layout_values = (
    st.none() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=3)
) | st.lists(INT64, max_size=5)


def parse(body: bytes, fast: bool) -> RankRequest:
    """The fast path when it takes the body, else the general one (RequestParser's order)."""
    if fast:
        request = FAST.parse(body, 100)
        if request is not None:
            return request
    return parse_general(body, 100, frozenset(KINDS.item))


def outcome(body: bytes, fast: bool) -> Any:
    """The parsed request and its encoded model inputs, or the error as (status, field, message)."""
    try:
        request = parse(body, fast)
        feeds = ENCODER.encode_group("user", user_columns(request, KINDS), 1)
        items = item_columns(request, KINDS)
        feeds.update(ENCODER.encode_group("item", items, request.size))
    except ApiError as error:
        return (error.status, error.field, error.message)
    return (request, feeds)


def assert_same(fast: Any, general: Any) -> None:
    assert type(fast) is type(general)
    if len(general) == 3:
        assert fast == general
        return
    assert fast[0] == general[0]  # one parsed form (3 and 3.0 compare equal)
    assert fast[1].keys() == general[1].keys()
    for name, array in general[1].items():
        np.testing.assert_array_equal(fast[1][name], array, err_msg=name)


def body_of(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(MORE_FIELDS), layout_values | json_values), min_size=0, max_size=3
    )
)
def test_fast_and_general_paths_agree(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    body = body_of(edited(BASE, edits))
    assert_same(outcome(body, True), outcome(body, False))


def random_layout_body(rng: np.random.Generator, n: int) -> dict[str, Any]:
    """A valid request in the typed layout, with nulls, text categories and empty tag lists."""

    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.1 else value

    ids = rng.choice(10**12, size=n, replace=False)
    candidates = [
        {
            "item_id": int(i) if rng.random() < 0.8 else f"item-{i}",
            "author_id": maybe(int(rng.integers(-(2**63), 2**63 - 1))),
            "category": maybe(int(rng.integers(50)) if rng.random() < 0.5 else 'cat é,"x'),
            "tags": maybe([int(t) for t in rng.integers(0, 10**6, size=rng.integers(0, 6))]),
            "duration": maybe(float(rng.normal()) if rng.random() < 0.5 else int(rng.integers(99))),
        }
        for i in ids
    ]
    return {**copy.deepcopy(BASE), "candidates": candidates, "top_k": int(rng.integers(1, 9))}


def test_random_valid_layouts_take_the_fast_path_and_agree() -> None:
    rng = np.random.default_rng(7)
    for n in (1, 2, 17, 100):
        for _ in range(10):
            body = body_of(random_layout_body(rng, n))
            assert FAST.parse(body, 100) is not None
            assert_same(outcome(body, True), outcome(body, False))


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_arbitrary_bytes_get_the_general_answer(raw: bytes) -> None:
    assert_same(outcome(raw, True), outcome(raw, False))


def test_the_common_layout_takes_the_fast_path() -> None:
    doc = copy.deepcopy(BASE)
    doc["candidates"][0]["author_id"] = None  # null: left out, still fast
    doc["candidates"][1]["tags"] = []
    request = FAST.parse(body_of(doc), 100)
    assert request is not None
    columns = item_columns(request, KINDS)
    assert columns["item_id"].dtype == np.int64
    assert columns["duration"].dtype == np.float64
    assert isinstance(columns["tags"], Ragged)
    assert "upload_age_days" not in request.items  # no candidate gives it, as on the general path
    assert_same(outcome(body_of(doc), True), outcome(body_of(doc), False))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("candidates", 0, "category"), 1.0),  # a float category
        (("candidates", 0, "tags"), ["a", "b"]),  # text tags
        (("candidates", 0, "duration"), True),  # a boolean number
        (("candidates", 0, "item_id"), 2**63),  # beyond int64
        (("candidates", 0, "colour"), "red"),  # unknown to the spec
        (("debug",), True),  # unknown top-level field
    ],
)
def test_other_layouts_take_the_general_path(path: tuple[Any, ...], value: Any) -> None:
    body = body_of(edited(BASE, [(path, value)]))
    assert FAST.parse(body, 100) is None
    assert_same(outcome(body, True), outcome(body, False))


def test_models_with_different_item_features_share_no_fast_path() -> None:
    wider = {**KINDS.item, "colour": "categorical"}
    same = RequestParser([KINDS.item, KINDS.item])
    assert same.fast is not None and same.fast.item_kinds == dict(KINDS.item)
    mixed = RequestParser([KINDS.item, wider])
    assert mixed.fast is None
    assert mixed.item_features == frozenset(wider)


def test_a_feature_only_another_model_takes_is_refused_by_the_model_that_lacks_it() -> None:
    parser = RequestParser([KINDS.item, {**KINDS.item, "colour": "categorical"}])
    doc = copy.deepcopy(BASE)
    plain = parser.parse(body_of(doc), 100)
    assert (
        item_columns(plain, KINDS).keys() == item_columns(parse(body_of(doc), True), KINDS).keys()
    )
    doc["candidates"][1]["colour"] = None  # null: left out, for any model
    assert "colour" not in parser.parse(body_of(doc), 100).items
    doc["candidates"][2]["colour"] = "red"
    request = parser.parse(body_of(doc), 100)
    with pytest.raises(ApiError) as refused:
        item_columns(request, KINDS)
    assert refused.value.field == "candidates[2].colour"
    wider = FieldKinds(KINDS.user, KINDS.context, {**KINDS.item, "colour": "categorical"})
    assert item_columns(request, wider)["colour"] == [None, None, "red", None]


@pytest.mark.parametrize(
    ("name", "nested"),
    [
        ("candidates[0].tags", "[" * 10_000 + "]" * 10_000),
        ("user.device", "[" * 10_000 + "]" * 10_000),
        ("context", '{"a":' * 10_000 + "1" + "}" * 10_000),
    ],
)
def test_deep_nesting_takes_the_general_path(name: str, nested: str) -> None:
    path = tuple(int(k) if k.isdigit() else k for k in name.replace("[0]", ".0").split("."))
    body = body_of(edited(BASE, [(path, "__deep__")])).replace(b'"__deep__"', nested.encode(), 1)
    assert FAST.parse(body, 100) is None
    assert_same(outcome(body, True), outcome(body, False))
