"""Embedding-table sizes from the cardinality a log shows, with headroom, instead of fixed millions.

Categorical values hash into `buckets` rows (`ranker.features`: splitmix64 for integers, xxh3 for
text, then mod buckets). Two rules:
- Low cardinality (at most `LOW_CARDINALITY` distinct values, hour of day, tab, category): the
  smallest bucket count of at least `LOW_HEADROOM` x the values under which every observed value
  (and the missing-value default) gets its own row. Exact, checked on the real hashes: they never
  collide, and the table stays a few times the cardinality.
- Higher cardinality (ids): the power of two at least `ID_HEADROOM` x the observed count (4-8x),
  room for ids the log has not shown yet; about 1 - exp(-1/4..1/8) = 12-22% of the ids seen share
  a row with another (mostly rare ones sharing with rare ones).
A table costs little when updates are row-sparse, so headroom is cheap; a million-row table for
1,500 videos is not (dense optimiser state, checkpoint size).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ranker.features import category_hashes, hash_value
from ranker.schema import Feature

LOW_CARDINALITY = 128
LOW_HEADROOM = 4
ID_HEADROOM = 4
MIN_BUCKETS = 8


@dataclass(frozen=True)
class Sizing:
    """A feature's bucket count and why (stored in the spec's `extra.bucket_sizing`)."""

    buckets: int
    cardinality: int  # distinct values observed, the missing-value default included
    reason: str


class CardinalityCounter:
    """Distinct values per categorical feature over a stream of chunks, kept as their sorted
    64-bit hashes (what the encoder buckets), so strings and integers count alike."""

    def __init__(self, features: Mapping[str, Feature]) -> None:
        self.features = dict(features)
        self.hashes: dict[str, np.ndarray] = {
            name: np.unique(np.array([hash_value(None, name, str(f.default))], dtype=np.uint64))
            for name, f in self.features.items()
        }

    def add(self, name: str, column: pa.Array | pa.ChunkedArray) -> None:
        """Count the values of one chunk of feature `name` (list columns: their elements)."""
        feature = self.features[name]
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = pc.list_flatten(column)
        if len(column) == 0:
            return
        seen = np.unique(category_hashes(column, name, str(feature.default)))
        self.hashes[name] = np.union1d(self.hashes[name], seen)

    def add_table(self, table: pa.Table) -> None:
        for name in self.features:
            if name in table.column_names:
                self.add(name, table[name])

    def sizing(self) -> dict[str, Sizing]:
        return {name: size_buckets(hashes) for name, hashes in self.hashes.items()}


def size_buckets(hashes: np.ndarray) -> Sizing:
    """The bucket count for a feature whose distinct values hash to `hashes` (uint64, unique)."""
    n = len(hashes)
    if n <= LOW_CARDINALITY:
        buckets = max(MIN_BUCKETS, LOW_HEADROOM * n)
        while len(np.unique(hashes % np.uint64(buckets))) < n:
            buckets += 1
        return Sizing(
            buckets,
            n,
            f"{n} values seen (missing-value default included): {buckets} buckets, the smallest "
            f">= {LOW_HEADROOM}x in which every one has its own row (no collisions)",
        )
    buckets = 1 << (ID_HEADROOM * n - 1).bit_length()
    return Sizing(
        buckets,
        n,
        f"{n} values seen (missing-value default included): {buckets} buckets, the power of two "
        f">= {ID_HEADROOM}x, headroom for unseen values",
    )
