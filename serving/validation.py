"""Parse and validate a /rank body: orjson on the bytes, then column-wise checks against the spec.

Checks run per column, not per candidate: `set(map(type, column))` is one C loop, and only a
column that fails is walked again in Python to name the first bad candidate. Every refusal is an
ApiError naming the field (`candidates[3].duration`), never a 500.

Request: `request_id`, `user` {`user_id`, user features...}, `context` {context features...},
`candidates` [{`item_id`, item features...}], optional `top_k`. A feature left out takes the
spec's default; JSON null counts as left out. Unknown categorical values are valid (hashed).
"""

from __future__ import annotations

import itertools
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa

from ranker.features import Ragged
from serving.decoding import RequestDecoder
from serving.errors import ApiError, bad_request
from serving.models import FieldKinds

REQUEST_KEYS = frozenset({"request_id", "user", "context", "candidates", "top_k"})
MAX_REQUEST_ID = 256
_NONE = type(None)
_SCALAR = frozenset({str, int, float, bool})
_ALLOWED: dict[str, frozenset[type]] = {
    "categorical": frozenset({str, int, float, bool, _NONE}),
    "dense": frozenset({int, float, bool, _NONE}),
    "multi_categorical": frozenset({list, _NONE}),
}
_EXPECTED = {
    "categorical": "a string or number",
    "dense": "a finite number",
    "multi_categorical": "a list of strings or numbers",
}
_JSON_TYPE = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    _NONE: "null",
    list: "array",
    dict: "object",
}


@dataclass(slots=True)
class RankRequest:
    """A structurally valid request; features are checked against a model's spec later."""

    request_id: str
    user_id: str | int
    user: dict[str, Any]
    context: dict[str, Any]
    # Dicts from the general path, or structs the typed decoder already checked: `typed`.
    candidates: list[Any]
    item_ids: list[Any]
    top_k: int | None
    # The item kinds the typed decoder checked the candidates against; None: general path.
    typed_for: Mapping[str, str] | None = None


def _type_name(value: Any) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def parse_request(
    body: bytes, max_candidates: int, decoder: RequestDecoder | None = None
) -> RankRequest:
    """The request's structure: JSON object, required fields, ids, candidate count, top_k.

    With a decoder, a body in its layout takes the typed fast path (serving/decoding.py); any
    other body, and any error, goes through the general path below.
    """
    decoded = decoder.decode(body) if decoder is not None else None
    if decoded is not None:
        doc: dict[str, Any] = {"request_id": decoded.request_id, "user": decoded.user}
        if decoded.context is not None:
            doc["context"] = decoded.context
        if decoded.top_k is not None:
            doc["top_k"] = decoded.top_k
        request = _checked_fields(doc, decoded.candidates, max_candidates)
        request.typed_for = decoder.item_kinds  # type: ignore[union-attr]
        request.item_ids = list(map(attrgetter("item_id"), request.candidates))
    else:
        doc = loads_object(body)
        if not doc.keys() <= REQUEST_KEYS:
            extra = sorted(doc.keys() - REQUEST_KEYS)[0]
            raise bad_request(extra, f"unknown field; valid: {sorted(REQUEST_KEYS)}")
        request = _checked_fields(doc, doc.get("candidates"), max_candidates)
        candidates = request.candidates
        if set(map(type, candidates)) != {dict}:
            i = next(i for i, c in enumerate(candidates) if type(c) is not dict)
            raise bad_request(
                f"candidates[{i}]", f"expected an object, got {_type_name(candidates[i])}"
            )
        request.item_ids = list(map(dict.get, candidates, itertools.repeat("item_id")))
    _check_item_ids(request.item_ids)
    top_k = doc.get("top_k")
    if top_k is not None and (type(top_k) is not int or top_k < 1):
        raise bad_request("top_k", "must be an integer >= 1")
    request.top_k = top_k
    return request


def _checked_fields(doc: dict[str, Any], candidates: Any, max_candidates: int) -> RankRequest:
    """Checks shared by both paths, in the order errors are reported; item ids come later."""
    request_id = _required(doc, "request_id", "request_id")
    if type(request_id) is not str or not 0 < len(request_id) <= MAX_REQUEST_ID:
        raise bad_request("request_id", f"must be a string of 1..{MAX_REQUEST_ID} characters")
    user = _required(doc, "user", "user")
    if type(user) is not dict:
        raise bad_request("user", f"expected an object, got {_type_name(user)}")
    user_id = _required(user, "user_id", "user.user_id")
    if type(user_id) not in (str, int) or user_id == "":
        raise bad_request("user.user_id", "must be a non-empty string or an integer")
    context = doc.get("context")
    if context is None:
        context = {}
    elif type(context) is not dict:
        raise bad_request("context", f"expected an object, got {_type_name(context)}")
    if candidates is None:
        raise bad_request("candidates", "required")
    if type(candidates) is not list:
        raise bad_request("candidates", f"expected an array, got {_type_name(candidates)}")
    if not candidates:
        raise bad_request("candidates", "must not be empty")
    if len(candidates) > max_candidates:
        raise bad_request(
            "candidates", f"{len(candidates)} candidates; at most {max_candidates} per request"
        )
    return RankRequest(request_id, user_id, user, context, candidates, [], None)


def _required(doc: dict[str, Any], key: str, where: str) -> Any:
    value = doc.get(key)
    if value is None:
        raise bad_request(where, "required")
    return value


def _check_item_ids(ids: list[Any]) -> None:
    types = set(map(type, ids))
    if not types <= {str, int}:
        i = next(i for i, v in enumerate(ids) if type(v) not in (str, int))
        if ids[i] is None:
            raise bad_request(f"candidates[{i}].item_id", "required")
        raise bad_request(
            f"candidates[{i}].item_id", f"must be a string or an integer, got {_type_name(ids[i])}"
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


def _check_single(value: Any, kind: str, where: str) -> Any:
    """One value of a user/context feature; returns it (None for missing)."""
    if type(value) not in _ALLOWED[kind]:
        raise bad_request(
            where, f"expected {_EXPECTED[kind]}, got {_type_name(value)} {reprlib.repr(value)}"
        )
    if kind == "multi_categorical" and value is not None:
        for j, item in enumerate(value):
            if type(item) not in _SCALAR:
                raise bad_request(
                    f"{where}[{j}]", f"expected a string or number, got {_type_name(item)}"
                )
    return value


def user_columns(request: RankRequest, kinds: FieldKinds) -> dict[str, Any]:
    """One-row columns of the user group (user + context features)."""
    columns: dict[str, Any] = {}
    for part, values, known in (
        ("user", request.user, kinds.user),
        ("context", request.context, kinds.context),
    ):
        for name, value in values.items():
            kind = known.get(name)
            if kind is None:
                if part == "user" and name == "user_id":
                    continue  # the bucketing id; a feature only when the spec names it
                raise bad_request(
                    f"{part}.{name}", f"unknown {part} feature; valid: {sorted(known)}"
                )
            value = _check_single(value, kind, f"{part}.{name}")
            # Arrays take the encoder's vectorised path: a one-row object column costs ~15 us.
            if type(value) is int and kind == "categorical" and -(2**63) <= value < 2**63:
                columns[name] = np.array([value], dtype=np.int64)
            elif type(value) in (int, float) and kind == "dense":
                columns[name] = np.array([value], dtype=np.float64)
            else:
                columns[name] = [value]
    return columns


def item_columns(request: RankRequest, kinds: FieldKinds) -> dict[str, Any]:
    """Item-group columns, one value per candidate, as arrays where the type allows it."""
    if request.typed_for is not None:
        if request.typed_for == kinds.item:
            return _typed_item_columns(request, kinds)
        _untype(request)  # decoded for other item features: check these the general way
    candidates = request.candidates
    present = set().union(*candidates)
    present.discard("item_id")
    unknown = present - kinds.item.keys()
    if unknown:
        name = sorted(unknown)[0]
        i = next(i for i, c in enumerate(candidates) if name in c)
        raise bad_request(
            f"candidates[{i}].{name}", f"unknown item feature; valid: {sorted(kinds.item)}"
        )
    columns: dict[str, Any] = {}
    for name, kind in kinds.item.items():
        if name == "item_id":
            column: list[Any] = request.item_ids
        elif name in present:
            column = list(map(dict.get, candidates, itertools.repeat(name)))
        else:
            continue  # every candidate takes the default
        columns[name] = _check_column(column, name, kind)
    return columns


def _typed_item_columns(request: RankRequest, kinds: FieldKinds) -> dict[str, Any]:
    """Columns of candidates the typed decoder checked: no type checks left, only conversions."""
    candidates = request.candidates
    columns: dict[str, Any] = {"item_id": _int64_or_list(request.item_ids)}
    for name, kind in kinds.item.items():
        if name == "item_id":
            continue
        column = list(map(attrgetter(name), candidates))  # null: the encoder's default
        if kind == "dense":
            columns[name] = np.array(column, dtype=np.float64)  # null -> NaN -> the default
        elif kind == "categorical":
            columns[name] = _int64_or_list(column)
        else:  # lists of int64 integers or null
            columns[name] = Ragged.of_int_lists(column)
    return columns


def _int64_or_list(column: list[Any]) -> Any:
    """An int64 array when every value is an integer that fits, else the list (for the encoder)."""
    if set(map(type, column)) == {int}:
        try:
            return np.array(column, dtype=np.int64)
        except OverflowError:
            return column
    return column


def _untype(request: RankRequest) -> None:
    request.candidates = [
        {k: v for k, v in msgspec.structs.asdict(c).items() if v is not None}
        for c in request.candidates
    ]
    request.typed_for = None


def _first_bad(column: list[Any], name: str, kind: str, allowed: frozenset[type]) -> ApiError:
    for i, value in enumerate(column):
        if type(value) not in allowed:
            return bad_request(
                f"candidates[{i}].{name}",
                f"expected {_EXPECTED[kind]}, got {_type_name(value)} {reprlib.repr(value)}",
            )
        if kind == "multi_categorical" and value is not None:
            for j, item in enumerate(value):
                if type(item) not in _SCALAR:
                    return bad_request(
                        f"candidates[{i}].{name}[{j}]",
                        f"expected a string or number, got {_type_name(item)}",
                    )
    raise AssertionError("no bad value found")  # pragma: no cover


def _check_column(column: list[Any], name: str, kind: str) -> Any:
    """Type-check a column and hand the encoder the cheapest form of it."""
    allowed = _ALLOWED[kind]
    types = set(map(type, column))
    if not types <= allowed:
        raise _first_bad(column, name, kind, allowed)
    if kind == "dense":
        if _NONE in types:
            return column  # the encoder puts the default in for null
        return np.array(column, dtype=np.float64)  # orjson never yields NaN or inf
    if kind == "categorical":
        return _int64_or_list(column)  # an int64 array is hashed vectorised
    flat_types = set(map(type, itertools.chain.from_iterable(filter(None, column))))
    if not flat_types <= _SCALAR:
        raise _first_bad(column, name, kind, allowed)
    if flat_types <= {int}:
        try:
            return pa.array(column, type=pa.list_(pa.int64()))  # flattened without a Python loop
        except (pa.ArrowInvalid, OverflowError):
            return column
    return column


def loads_object(body: bytes) -> dict[str, Any]:
    """A JSON object from a body (400 when it is not JSON, 422 when not an object)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "body", f"malformed JSON: {exc}") from None
    if type(doc) is not dict:
        raise bad_request("body", f"expected a JSON object, got {_type_name(doc)}")
    return doc
