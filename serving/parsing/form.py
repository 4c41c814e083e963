"""The one parsed form of a /rank body, and the checks both parsing paths share.

Request: `request_id`, `user` {`user_id`, user features...}, `context` {context features...},
`candidates` [{`item_id`, item features...}], optional `top_k`. A feature left out takes the
spec's default; JSON null counts as left out. Unknown categorical values are valid (hashed).

Whichever path decoded the body (serving/parsing/fast.py or general.py), the result is a
`RankRequest` holding the candidates as columns of raw values: the fast and the general path
differ in speed, never in what they hand on. Feature values are type-checked against the model's
spec when the columns are built (serving/columns.py), once the request's model is known.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.errors import bad_request

REQUEST_KEYS = frozenset({"request_id", "user", "context", "candidates", "top_k"})
MAX_REQUEST_ID = 256
_JSON_TYPE = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
    list: "array",
    dict: "object",
}


@dataclass(frozen=True, slots=True)
class RankRequest:
    """A structurally valid /rank request; its features are checked against a model later."""

    request_id: str
    user_id: str | int
    user: dict[str, Any]  # user features as sent (user_id included)
    context: dict[str, Any]  # context features as sent ({} when left out)
    item_ids: list[str | int]  # one per candidate, unique
    # Item feature -> one raw value per candidate (None: left out), for the features some
    # candidate gives a value (not null); sorted by name.
    items: dict[str, list[Any]]
    top_k: int | None
    # Item feature -> the kind whose types the parser already checked (the fast path: msgspec did,
    # in C); serving/columns.py skips its own check where the model's kind is the same. Not part
    # of equality: both paths hand on the same request.
    checked_kinds: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def size(self) -> int:
        """The number of candidates."""
        return len(self.item_ids)


def type_name(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    return _JSON_TYPE.get(type(value), type(value).__name__)


def checked_head(doc: dict[str, Any]) -> tuple[str, str | int, dict[str, Any], dict[str, Any]]:
    """request_id, user_id, user and context of a decoded body, in the order errors are reported."""
    request_id = _required(doc, "request_id", "request_id")
    if type(request_id) is not str or not 0 < len(request_id) <= MAX_REQUEST_ID:
        raise bad_request("request_id", f"must be a string of 1..{MAX_REQUEST_ID} characters")
    user = _required(doc, "user", "user")
    if type(user) is not dict:
        raise bad_request("user", f"expected an object, got {type_name(user)}")
    user_id = _required(user, "user_id", "user.user_id")
    if type(user_id) not in (str, int) or user_id == "":
        raise bad_request("user.user_id", "must be a non-empty string or an integer")
    context = doc.get("context")
    if context is None:
        context = {}
    elif type(context) is not dict:
        raise bad_request("context", f"expected an object, got {type_name(context)}")
    return request_id, user_id, user, context


def check_candidates(candidates: Any, max_candidates: int) -> list[Any]:
    if candidates is None:
        raise bad_request("candidates", "required")
    if type(candidates) is not list:
        raise bad_request("candidates", f"expected an array, got {type_name(candidates)}")
    if not candidates:
        raise bad_request("candidates", "must not be empty")
    if len(candidates) > max_candidates:
        raise bad_request(
            "candidates", f"{len(candidates)} candidates; at most {max_candidates} per request"
        )
    return candidates


def check_item_ids(ids: list[Any]) -> None:
    """Every id a non-empty string or an integer, no two alike (7 and "7" are one item)."""
    types = set(map(type, ids))
    if not types <= {str, int}:
        i = next(i for i, v in enumerate(ids) if type(v) not in (str, int))
        if ids[i] is None:
            raise bad_request(f"candidates[{i}].item_id", "required")
        raise bad_request(
            f"candidates[{i}].item_id", f"must be a string or an integer, got {type_name(ids[i])}"
        )
    # 7 and "7" are one item to the feature hash, so they are duplicates here too.
    keys = list(map(str, ids)) if len(types) > 1 else ids
    if len(set(keys)) != len(keys):
        seen: dict[Any, int] = {}
        for i, key in enumerate(keys):
            if key in seen:
                raise bad_request(
                    f"candidates[{i}].item_id",
                    f"duplicate item id {reprlib.repr(ids[i])} (also candidates[{seen[key]}])",
                )
            seen[key] = i
    if str in types and "" in keys:
        raise bad_request(f"candidates[{keys.index('')}].item_id", "must not be empty")


def all_none(column: Sequence[Any]) -> bool:
    """Whether a (non-empty) candidate column is null on every candidate (the feature is then
    left out). The first value settles the usual case: `count(None)` asks each value's `__eq__`,
    24 us over six columns of 500 candidates."""
    return column[0] is None and column.count(None) == len(column)


def check_top_k(top_k: Any) -> int | None:
    if top_k is not None and (type(top_k) is not int or top_k < 1):
        raise bad_request("top_k", "must be an integer >= 1")
    return top_k  # type: ignore[no-any-return]


def _required(doc: dict[str, Any], key: str, where: str) -> Any:
    value = doc.get(key)
    if value is None:
        raise bad_request(where, "required")
    return value
