"""The general parsing path: any JSON body, orjson, then checks that name the field they refuse.

Candidates are checked as a whole, not one by one: `set(map(type, candidates))` is one C loop,
and only a failing check walks the list again in Python to name the first bad candidate. Every
refusal is an ApiError naming the field (`candidates[3].item_id`), never a 500.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from typing import Any

import orjson

from serving.errors import ApiError, bad_request
from serving.parsing.form import (
    REQUEST_KEYS,
    RankRequest,
    all_none,
    check_candidates,
    check_item_ids,
    check_top_k,
    checked_head,
    type_name,
)


def parse_general(body: bytes, max_candidates: int, item_features: Collection[str]) -> RankRequest:
    """A RankRequest from any body; `item_features`: the item feature names some model takes."""
    doc = loads_object(body)
    if not doc.keys() <= REQUEST_KEYS:
        extra = sorted(doc.keys() - REQUEST_KEYS)[0]
        raise bad_request(extra, f"unknown field; valid: {sorted(REQUEST_KEYS)}")
    request_id, user_id, user, context = checked_head(doc)
    candidates = check_candidates(doc.get("candidates"), max_candidates)
    if set(map(type, candidates)) != {dict}:
        i = next(i for i, c in enumerate(candidates) if type(c) is not dict)
        raise bad_request(f"candidates[{i}]", f"expected an object, got {type_name(candidates[i])}")
    item_ids: list[Any] = list(map(dict.get, candidates, itertools.repeat("item_id")))
    check_item_ids(item_ids)
    top_k = check_top_k(doc.get("top_k"))
    present = set().union(*candidates)
    present.discard("item_id")
    unknown = present.difference(item_features)
    if unknown:
        name = sorted(unknown)[0]
        i = next(i for i, c in enumerate(candidates) if name in c)
        raise bad_request(
            f"candidates[{i}].{name}", f"unknown item feature; valid: {sorted(item_features)}"
        )
    items = {}
    for name in sorted(present):
        column = list(map(dict.get, candidates, itertools.repeat(name)))
        if not all_none(column):  # all null: left out, as on the fast path
            items[name] = column
    return RankRequest(request_id, user_id, user, context, item_ids, items, top_k)


def loads_object(body: bytes) -> dict[str, Any]:
    """A JSON object from a body (400 when it is not JSON, 422 when not an object)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "body", f"malformed JSON: {exc}") from None
    if type(doc) is not dict:
        raise bad_request("body", f"expected a JSON object, got {type_name(doc)}")
    return doc
