"""/rank request parsing: bytes in, one `RankRequest` out, by the fast or the general path.

`RequestParser` is built with each serving state from the item features its models take. A body
in the common layout is decoded by msgspec in one C pass (fast.py); any other body, and any body
the fast path declines, by orjson and Python checks (general.py). Both return the same form
(form.py), so what follows never knows which path ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from serving.parsing.fast import FastDecoder
from serving.parsing.form import RankRequest
from serving.parsing.general import loads_object, parse_general

__all__ = ["RankRequest", "RequestParser", "loads_object"]


class RequestParser:
    """Parses /rank bodies for models taking the given item features (one mapping per model)."""

    def __init__(self, item_kinds: Iterable[Mapping[str, str]]) -> None:
        kinds = {tuple(k.items()) for k in item_kinds}
        # Names no model takes are refused while parsing; those only some models take, once
        # the request's model is known (serving/columns.py).
        self.item_features = frozenset(name for k in kinds for name, _ in k)
        # The fast path types the candidates, so it needs one kind per feature: every model
        # taking the same item features (a variant testing a new feature turns it off).
        self.fast = FastDecoder(dict(next(iter(kinds)))) if len(kinds) == 1 else None

    def parse(self, body: bytes, max_candidates: int) -> RankRequest:
        """The parsed request, or an ApiError naming the field (400 for malformed JSON)."""
        if self.fast is not None:
            request = self.fast.parse(body, max_candidates)
            if request is not None:
                return request
        return parse_general(body, max_candidates, self.item_features)
