"""Whatever JSON arrives, parsing + column building + encoding raise only field-named ApiErrors."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranker.features import FeatureEncoder
from ranker.schema import load_default_spec
from serving.columns import item_columns, user_columns
from serving.errors import ApiError
from serving.models import FieldKinds
from serving.parsing import RequestParser

SPEC = load_default_spec()
ENCODER = FeatureEncoder(SPEC)
KINDS = FieldKinds.of(SPEC)
PARSER = RequestParser([KINDS.item])
BASE: dict[str, Any] = {
    "request_id": "r",
    "user": {"user_id": 7, "device": "ios", "user_active_degree": "high", "user_code_0": 3},
    "context": {"hour": 5, "tab": 1},
    "candidates": [
        {"item_id": i, "category": i % 3, "tags": [i, 2], "duration": 10.0 + i, "author_id": "a"}
        for i in range(4)
    ],
}
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what JSON encoders emit
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=6,
)
FIELDS = [
    ("request_id",),
    ("user",),
    ("user", "user_id"),
    ("user", "device"),
    ("user", "follower_bucket"),
    ("user", "unknown"),
    ("context",),
    ("context", "hour"),
    ("candidates",),
    ("candidates", 1),
    ("candidates", 1, "item_id"),
    ("candidates", 2, "category"),
    ("candidates", 0, "tags"),
    ("candidates", 3, "duration"),
    ("candidates", 3, "upload_age_days"),
    ("candidates", 2, "colour"),
    ("top_k",),
]


def edited(base: dict[str, Any], edits: list[tuple[tuple[Any, ...], Any]]) -> dict[str, Any]:
    """A copy of `base` with each (path, value) set; an edit whose parent is gone is skipped."""
    doc = copy.deepcopy(base)
    for path, value in edits:
        target: Any = doc
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed the parent
    return doc


def run(body: bytes) -> None:
    request = PARSER.parse(body, max_candidates=100)
    users = user_columns(request, KINDS)
    items = item_columns(request, KINDS)
    ENCODER.encode_group("user", users, 1)
    ENCODER.encode_group("item", items, request.size)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(st.tuples(st.sampled_from(FIELDS), json_values), min_size=1, max_size=3))
def test_any_edit_is_accepted_or_refused_by_name(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    try:
        run(orjson.dumps(edited(BASE, edits), option=orjson.OPT_NON_STR_KEYS))
    except ApiError as error:
        assert 400 <= error.status < 500
        assert error.field and error.message


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_arbitrary_bytes_never_escape(raw: bytes) -> None:
    try:
        run(raw)
    except ApiError as error:
        assert error.status in (400, 422)
