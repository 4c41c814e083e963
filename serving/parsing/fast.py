"""The fast parsing path: one msgspec pass that decodes and type-checks the candidates in C.

`FastDecoder` is built from the item feature kinds every served model shares. It decodes the body
straight into one small struct per candidate and transposes them into the columns of a
`RankRequest`, the same form the general path builds. It accepts only the common layout, with
numbers where the general path would accept them too:

- `item_id`: an int64 integer or a string;
- categorical: an int64 integer, a string or null;
- dense: a number (an integer stays one) or null;
- multi-categorical: a list of int64 integers, or null.

Anything else (a float or boolean category, string tags, an unknown field, malformed JSON) returns
None and the caller takes the general path, which accepts exactly what it accepted before and
names the field it refuses. Checks past the layout (ids, sizes, top_k) are the shared ones of
serving/parsing/form.py, so a refusal reads the same on either path, and the fast path changes
speed, never answers: `tests/serving/parsing/test_fast_and_general.py` checks both paths agree
on arbitrary edits of a request. User and context stay JSON text here (`msgspec.Raw`) and are
parsed by orjson: there are few of them, and their checks live in serving/columns.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
import orjson

from serving.parsing.form import (
    RankRequest,
    all_none,
    check_candidates,
    check_item_ids,
    check_top_k,
    checked_head,
)

# msgspec's bounds must fit int64; larger JSON integers take the general path.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

_FIELD_TYPES: dict[str, Any] = {
    "categorical": Int64 | str | None,
    # int | float: a JSON integer stays an int, as orjson leaves it (2**53 + 1 is exact).
    "dense": int | float | None,
    "multi_categorical": list[Int64] | None,
}


class FastDecoder:
    """Decodes /rank bodies whose candidates carry the given item features (name -> kind)."""

    def __init__(self, item_kinds: Mapping[str, str]) -> None:
        self.item_kinds = dict(item_kinds)
        self._names = sorted(name for name in item_kinds if name != "item_id")
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [("item_id", Int64 | str)]
        fields += [(name, _FIELD_TYPES[item_kinds[name]], None) for name in self._names]
        candidate = msgspec.defstruct(
            "Candidate", fields, forbid_unknown_fields=True, gc=False, frozen=True
        )
        body = msgspec.defstruct(
            "Body",
            [
                ("request_id", str),
                ("user", msgspec.Raw),
                ("candidates", list[candidate]),  # type: ignore[valid-type]
                ("context", msgspec.Raw | msgspec.UnsetType, msgspec.UNSET),
                ("top_k", Int64 | None, None),
            ],
            forbid_unknown_fields=True,
            gc=False,
        )
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(body)

    def parse(self, body: bytes, max_candidates: int) -> RankRequest | None:
        """The parsed request; None when the body needs the general path (for any reason).

        Raises the shared checks' ApiErrors, which the general path would raise alike."""
        try:
            doc: Any = self._decoder.decode(body)  # a struct type built at run time
            head = {"request_id": doc.request_id, "user": orjson.loads(memoryview(doc.user))}
            if doc.context is not msgspec.UNSET:
                head["context"] = orjson.loads(memoryview(doc.context))
        except (msgspec.MsgspecError, ValueError, RecursionError):
            return None  # JSON and Unicode errors are ValueErrors; deep nesting recurses
        request_id, user_id, user, context = checked_head(head)
        candidates = check_candidates(doc.candidates, max_candidates)
        # One C pass turns the structs into rows and zip() transposes them into columns.
        columns = list(zip(*map(msgspec.structs.astuple, candidates), strict=True))
        item_ids = list(columns[0])
        check_item_ids(item_ids)
        top_k = check_top_k(doc.top_k)
        items = {
            name: list(column)
            for name, column in zip(self._names, columns[1:], strict=True)
            if not all_none(column)  # every candidate left it out: as the general path
        }
        return RankRequest(
            request_id, user_id, user, context, item_ids, items, top_k, self.item_kinds
        )
