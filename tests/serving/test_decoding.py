"""The typed fast path changes speed, never answers: it agrees with the general path on any body."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranker.features import Ragged
from serving.decoding import RequestDecoder
from serving.errors import ApiError
from serving.models import FieldKinds
from serving.state import typed_decoder
from serving.validation import item_columns, parse_request, user_columns
from tests.serving.test_validation_fuzz import BASE, ENCODER, FIELDS, KINDS, edited, json_values

DECODER = RequestDecoder(KINDS.item)
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


def outcome(body: bytes, decoder: RequestDecoder | None) -> Any:
    """Encoded model inputs, or the error as (status, field, message)."""
    try:
        request = parse_request(body, 100, decoder)
        feeds = ENCODER.encode_group("user", user_columns(request, KINDS), 1)
        items = item_columns(request, KINDS)
        feeds.update(ENCODER.encode_group("item", items, len(request.candidates)))
    except ApiError as error:
        return (error.status, error.field, error.message)
    return (request.request_id, request.user_id, request.item_ids, request.top_k, feeds)


def assert_same(fast: Any, general: Any) -> None:
    assert type(fast) is type(general)
    if len(general) == 3:
        assert fast == general
        return
    assert fast[:4] == general[:4]
    assert fast[4].keys() == general[4].keys()
    for name, array in general[4].items():
        np.testing.assert_array_equal(fast[4][name], array, err_msg=name)


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
    assert_same(outcome(body, DECODER), outcome(body, None))


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
            assert DECODER.decode(body) is not None
            assert_same(outcome(body, DECODER), outcome(body, None))


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_arbitrary_bytes_get_the_general_answer(raw: bytes) -> None:
    assert_same(outcome(raw, DECODER), outcome(raw, None))


def test_the_common_layout_takes_the_fast_path() -> None:
    doc = copy.deepcopy(BASE)
    doc["candidates"][0]["author_id"] = None  # null: left out, still fast
    doc["candidates"][1]["tags"] = []
    request = parse_request(body_of(doc), 100, DECODER)
    assert request.typed_for == KINDS.item
    columns = item_columns(request, KINDS)
    assert columns["item_id"].dtype == np.int64
    assert columns["duration"].dtype == np.float64
    assert isinstance(columns["tags"], Ragged)
    assert_same(outcome(body_of(doc), DECODER), outcome(body_of(doc), None))


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
    assert DECODER.decode(body) is None
    assert_same(outcome(body, DECODER), outcome(body, None))


def test_models_with_different_item_features_share_no_decoder() -> None:
    same = SimpleNamespace(kinds=KINDS)
    other = SimpleNamespace(
        kinds=FieldKinds(KINDS.user, KINDS.context, {**KINDS.item, "colour": "categorical"})
    )
    decoder = typed_decoder([same, same])  # type: ignore[list-item]
    assert decoder is not None and decoder.item_kinds == dict(KINDS.item)
    assert typed_decoder([same, other]) is None  # type: ignore[list-item]


def test_candidates_decoded_for_other_features_are_checked_the_general_way() -> None:
    wider = {**KINDS.item, "colour": "categorical"}
    doc = copy.deepcopy(BASE)
    request = parse_request(body_of(doc), 100, RequestDecoder(wider))
    assert request.typed_for == wider
    general = item_columns(parse_request(body_of(doc), 100), KINDS)
    columns = item_columns(request, KINDS)
    assert request.typed_for is None and columns.keys() == general.keys()
    doc["candidates"][2]["colour"] = "red"
    request = parse_request(body_of(doc), 100, RequestDecoder(wider))
    with pytest.raises(ApiError) as refused:
        item_columns(request, KINDS)
    assert refused.value.field == "candidates[2].colour"


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
    assert DECODER.decode(body) is None
    assert_same(outcome(body, DECODER), outcome(body, None))
