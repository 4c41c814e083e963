"""The typed fast path for /rank bodies: one msgspec pass that parses and type-checks candidates.

`RequestDecoder` is built from a model's item feature kinds. It decodes the body straight into
one small struct per candidate, checking in C what `serving.validation` checks column by column
in Python; the columns then come out without a second look at their types. It accepts only the
common layout, with numbers where the general path would accept them too:

- `item_id`: an int64 integer or a string;
- categorical: an int64 integer, a string or null;
- dense: a number or null;
- multi-categorical: a list of int64 integers, or null.

Anything else (a float or boolean category, string tags, an unknown field, malformed JSON, any
error at all) returns None and the caller takes the general path, which accepts exactly what it
accepted before and names the field it refuses. So the fast path changes speed, never answers:
`tests/serving/test_decoding.py` checks both paths agree on arbitrary edits of a request.
User and context features stay JSON text here (`msgspec.Raw`) and are parsed by orjson, as on
the general path: there are few of them, and their checks live in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import orjson

# msgspec's bounds must fit int64; larger JSON integers take the general path.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

_FIELD_TYPES: dict[str, Any] = {
    "categorical": Int64 | str | None,
    "dense": float | None,
    "multi_categorical": list[Int64] | None,
}


@dataclass(frozen=True, slots=True)
class DecodedBody:
    """A body the typed decoder accepted; user and context are parsed, not yet checked."""

    request_id: str
    user: Any
    context: Any
    candidates: list[Any]  # one msgspec struct per candidate, attributes named by feature
    top_k: int | None


class RequestDecoder:
    """Decodes /rank bodies whose candidates carry the given item features (name -> kind)."""

    def __init__(self, item_kinds: Mapping[str, str]) -> None:
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [("item_id", Int64 | str)]
        fields += [
            (name, _FIELD_TYPES[kind], None)
            for name, kind in item_kinds.items()
            if name != "item_id"
        ]
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
        self.item_kinds = dict(item_kinds)
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(body)

    def decode(self, body: bytes) -> DecodedBody | None:
        """The decoded body, or None when it needs the general path (for any reason)."""
        try:
            doc: Any = self._decoder.decode(body)  # a struct type built at run time
            user = orjson.loads(memoryview(doc.user))
            context = (
                None if doc.context is msgspec.UNSET else orjson.loads(memoryview(doc.context))
            )
        except (msgspec.MsgspecError, ValueError, RecursionError):
            return None  # JSON and Unicode errors are ValueErrors; deep nesting recurses
        return DecodedBody(doc.request_id, user, context, doc.candidates, doc.top_k)
