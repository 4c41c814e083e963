"""The features a ranked request was served with, for the impression record (RANKER_LOG_FEATURES).

Training rows built from the log must be what the model saw, not features re-joined later (which
drift: an item's age, a user's follower count). The record carries the raw values the encoder
received: user and context once per request, and for the served items one column per item
feature in served order (position p is index p, as in the record's `positions`); a list feature
is the request's own lists, null where a candidate gave none. `item_id` is left out of the
columns: the record's `item_ids` holds it. A feature no candidate gave a value
(left out or null on every one) is absent: every item took the spec's default, as a reader of the
log does for a missing column.

Building this costs nothing before the response: `ServedFeatures` keeps references to the
columns the request and the encoder already hold, and the record is turned into JSON
(`impressions.encode_default`) after the response is sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


class ServedFeatures:
    """Not a dataclass: orjson would serialise a dataclass field by field itself, never asking
    `to_json`."""

    __slots__ = ("context", "items", "order", "user")

    def __init__(
        self,
        user: dict[str, Any],  # the request's user object (raw values, user_id included)
        context: dict[str, Any],  # the request's context object
        items: dict[str, Any],  # item columns, in request order (serving.ranking.served)
        order: np.ndarray,  # served position -> index into the request's candidates
    ) -> None:
        self.user = user
        self.context = context
        self.items = items
        self.order = order

    def to_json(self) -> dict[str, Any]:
        """The record's `features` (numpy arrays are left to orjson)."""
        order = self.order
        columns = {
            name: _served(column, order) for name, column in self.items.items() if name != "item_id"
        }
        return {"user": self.user, "context": self.context, "items": columns}


def _served(column: Any, order: np.ndarray) -> Any:
    if isinstance(column, np.ndarray):
        return column[order]
    if isinstance(column, pa.Array | pa.ChunkedArray):  # the general path's list columns
        return column.take(pa.array(order)).to_pylist()
    return [column[i] for i in order.tolist()]
