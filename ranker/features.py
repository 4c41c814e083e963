"""Feature encoding: the one numpy implementation shared by training and serving.

`FeatureEncoder.encode_group` turns raw column values into the arrays the model reads, per input
group (`user` = user + context features, `item` = item features):

- `{group}_cat`   int64 [B, n_cat]   hash bucket of each categorical feature, in spec order;
- `{group}_multi` int64 [B, sum(max_len)] multi-categorical features side by side, each `max_len`
  columns wide; 0 is padding and real ids are 1..buckets;
- `{group}_dense` float32 [B, n_dense] transformed values (standardisation happens in the model,
  whose exported graph carries the fitted statistics).

Categorical values hash by value with stable 64-bit hashes: integers with splitmix64's finaliser
(vectorised), other text with xxh3-64, and `7`, `7.0` and `"7"` are one category. An unknown category
is just another bucket, and training and serving agree bit for bit. Distinct strings are hashed once
per call, not once per row.

Over 400 lines on purpose: this is the one encoder training and serving share (DESIGN.md), and its
hashing, column coercion and group assembly must change together to stay bit for bit equal.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from ranker.schema import DenseStats, Feature, FeatureSpec, SpecError

GROUPS: tuple[str, ...] = ("user", "item")
ColumnLike = Any  # numpy array, pyarrow array, Ragged, or a Python sequence


@dataclass(frozen=True, slots=True)
class Ragged:
    """A multi-valued column as flat values plus one length per row (row i holds
    `values[sum(lengths[:i]) : sum(lengths[:i + 1])]`): the cheapest form to build from Python
    lists (two C passes) and to encode (no per-row Python, no Arrow round trip)."""

    values: np.ndarray
    lengths: np.ndarray  # int64 [rows]

    @classmethod
    def of_int_lists(cls, rows: Sequence[Sequence[int] | None]) -> Ragged:
        """From lists of int64-range integers (None: an empty row)."""
        filled: Sequence[Sequence[int]]
        try:
            lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))  # type: ignore[arg-type]
            filled = rows  # type: ignore[assignment]  # no None row, or len() had raised
        except TypeError:  # a None row
            filled = [row or () for row in rows]
            lengths = np.fromiter(map(len, filled), dtype=np.int64, count=len(filled))
        count = int(lengths.sum())
        values = np.fromiter(itertools.chain.from_iterable(filled), dtype=np.int64, count=count)
        return cls(values, lengths)

    def __len__(self) -> int:
        return len(self.lengths)


_INT_TEXT = re.compile(r"-?(0|[1-9][0-9]{0,18})")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over int64 values: a fast, stable, well-mixed 64-bit hash.

    In-place arithmetic on two buffers: fresh large temporaries cost page faults, not arithmetic.
    """
    z = values.astype(np.int64, copy=True).view(np.uint64)
    z += np.uint64(0x9E3779B97F4A7C15)
    shifted = z >> np.uint64(30)
    z ^= shifted
    z *= np.uint64(0xBF58476D1CE4E5B9)
    np.right_shift(z, np.uint64(27), out=shifted)
    z ^= shifted
    z *= np.uint64(0x94D049BB133111EB)
    np.right_shift(z, np.uint64(31), out=shifted)
    z ^= shifted
    return z


_MASK64 = 2**64 - 1


def mix64_int(value: int) -> int:
    """`mix64` of one int64 value in plain Python: a numpy call per value costs ~10x more."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def hash_value(value: Any, feature: str, default: str = "") -> int:
    """Stable 64-bit hash of one categorical value.

    Integers (and integral floats, and strings spelling an integer such as "7") hash by value, so
    `7`, `7.0` and `"7"` are one category whether ids arrive as JSON numbers or strings; any other
    text hashes its UTF-8 bytes with xxh3-64. Missing values (None, NaN) hash like `default`.
    """
    if isinstance(value, np.generic):
        value = value.item()  # numpy 2 scalars repr as "np.float64(2.5)": hash the Python value
    if value is None or (isinstance(value, float) and value != value):
        value = default
    if (
        isinstance(value, bool)
        or (isinstance(value, float) and value.is_integer())
        or (isinstance(value, str) and _INT_TEXT.fullmatch(value))
    ):
        value = int(value)
    if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
        return mix64_int(value)
    if isinstance(value, int | float | str):
        text = value if isinstance(value, str) else repr(value)
        return xxhash.xxh3_64_intdigest(text.encode("utf-8"))
    raise SpecError(f"feature {feature!r}: expected a string or number, got {type(value).__name__}")


def category_hashes(values: ColumnLike, feature: str, default: str = "") -> np.ndarray:
    """uint64 hashes of a 1-d categorical column; each distinct non-integer value is hashed once."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return _arrow_hashes(values, feature, default)
    array = values if isinstance(values, np.ndarray) else _object_array(values)
    if array.ndim != 1:
        raise SpecError(f"feature {feature!r}: expected one value per row, got shape {array.shape}")
    if array.dtype.kind in "iub":
        return mix64(array.astype(np.int64, copy=False))
    if array.dtype.kind == "f":
        integral = np.isfinite(array) & (np.floor(array) == array)
        out = mix64(np.where(integral, array, 0).astype(np.int64))
        if not integral.all():
            out[~integral] = _hash_objects(array[~integral].tolist(), feature, default)
        return out
    if array.dtype.kind in "OUS":
        return _hash_objects(array.tolist(), feature, default)
    raise SpecError(f"feature {feature!r}: unsupported column type {array.dtype}")


def _hash_objects(values: list[Any], feature: str, default: str) -> np.ndarray:
    index: dict[Any, int] = {}
    codes = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        if isinstance(value, float) and value != value:
            value = None  # every NaN is the same missing value
        try:
            codes[i] = index.setdefault(value, len(index))
        except TypeError:  # unhashable, e.g. a list given for a single-valued feature
            raise SpecError(
                f"feature {feature!r}: expected a string or number, got {type(value).__name__}"
            ) from None
    hashes = np.fromiter(
        (hash_value(v, feature, default) for v in index), dtype=np.uint64, count=len(index)
    )
    return hashes[codes]


def _arrow_hashes(values: pa.ChunkedArray | pa.Array, feature: str, default: str) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        if values.null_count == 0:
            return mix64(values.to_numpy(zero_copy_only=False))
        missing = values.is_null().to_numpy(zero_copy_only=False)
        out = mix64(values.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))
        out[missing] = hash_value(None, feature, default)
        return out
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = values.dictionary_encode()
        kind = values.type
    if pa.types.is_dictionary(kind):
        dictionary = _hash_objects(values.dictionary.to_pylist(), feature, default)
        indices = values.indices
        missing = indices.is_null().to_numpy(zero_copy_only=False)
        codes = indices.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        out = dictionary[codes] if dictionary.size else np.zeros(len(codes), dtype=np.uint64)
        if missing.any():
            out[missing] = hash_value(None, feature, default)
        return out
    if pa.types.is_floating(kind):
        return category_hashes(values.to_numpy(zero_copy_only=False), feature, default)
    raise SpecError(f"feature {feature!r}: expected a string or number column, got {kind}")


def hash_categorical(
    values: ColumnLike, buckets: int, feature: str, default: str = ""
) -> np.ndarray:
    """Bucket ids in [0, buckets) for a 1-d column of categorical values."""
    ints = _plain_ints(values)
    if ints is not None:
        dense = _dense_range_buckets(ints, buckets)
        if dense is not None:
            return dense
    hashes = category_hashes(values, feature, default)
    np.remainder(hashes, np.uint64(buckets), out=hashes)
    return hashes.view(np.int64)


def _dense_range_buckets(ints: np.ndarray, buckets: int) -> np.ndarray | None:
    """Buckets of integers that span fewer values than there are rows (ids, hours, codes): hash
    each value of the range once and gather, instead of mixing and dividing every row."""
    if ints.size < 1024:
        return None
    low, high = int(ints.min()), int(ints.max())
    if high - low >= ints.size:
        return None
    table = mix64(np.arange(low, high + 1, dtype=np.int64))
    np.remainder(table, np.uint64(buckets), out=table)
    return table.view(np.int64)[ints - low]


def _plain_ints(column: ColumnLike) -> np.ndarray | None:
    """The column as an int64 array when it holds integers without missing values, else None."""
    if isinstance(column, np.ndarray):
        return column if column.dtype.kind in "iub" and column.ndim == 1 else None
    if isinstance(column, pa.ChunkedArray | pa.Array):
        kind = column.type
        if (pa.types.is_integer(kind) or pa.types.is_boolean(kind)) and column.null_count == 0:
            return np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False))
    return None


def _object_array(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _to_numpy(values: ColumnLike) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return values.to_numpy(zero_copy_only=False)
    if isinstance(values, np.ndarray):
        return values
    return _object_array(values)


def _flatten_lists(values: ColumnLike, feature: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, row lengths) of a multi-valued column.

    Accepts a Ragged column, a pyarrow list column, or a sequence whose items are lists/arrays,
    comma-separated strings ("12,65", the KuaiRand layout) or None (an empty list).
    """
    if isinstance(values, Ragged):
        return values.values, values.lengths
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.ListArray | pa.LargeListArray):
        offsets = values.offsets.to_numpy()
        lengths = np.diff(offsets).astype(np.int64)
        if values.null_count:
            lengths[values.is_null().to_numpy(zero_copy_only=False)] = 0
        flat = values.flatten().to_numpy(zero_copy_only=False)
        return flat, lengths
    if isinstance(values, pa.Array):
        values = values.to_pylist()  # e.g. comma-separated text read from CSV
    rows = values.tolist() if isinstance(values, np.ndarray) else list(values)
    pieces: list[Any] = []
    lengths = np.zeros(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        if row is None or (isinstance(row, float) and row != row):
            continue
        if isinstance(row, str):
            items: Iterable[Any] = [t for t in (s.strip() for s in row.split(",")) if t]
        elif isinstance(row, list | tuple | np.ndarray):
            items = row.tolist() if isinstance(row, np.ndarray) else row
        else:
            raise SpecError(
                f"feature {feature!r}: expected a list of values, got {type(row).__name__}"
            )
        before = len(pieces)
        pieces.extend(items)
        lengths[i] = len(pieces) - before
    flat = np.empty(len(pieces), dtype=object)
    flat[:] = pieces
    return flat, lengths


def hash_multi_categorical(values: ColumnLike, feature: Feature) -> np.ndarray:
    """[rows, max_len] ids in 1..buckets, 0-padded; lists longer than max_len are truncated."""
    flat, lengths = _flatten_lists(values, feature.name)
    rows = len(lengths)
    out = np.zeros((rows, feature.max_len), dtype=np.int64)
    if flat.size == 0:
        return out
    ids = hash_categorical(flat, feature.buckets, feature.name, str(feature.default))
    ids += 1
    row_of = np.repeat(np.arange(rows), lengths)
    position = np.arange(flat.size)
    position -= (np.cumsum(lengths) - lengths)[row_of]
    target = row_of * feature.max_len + position  # flat index: 1-d scatter is ~10x a 2-d one
    keep = position < feature.max_len
    if keep.all():
        out.reshape(-1)[target] = ids
    else:
        out.reshape(-1)[target[keep]] = ids[keep]
    return out


def dense_values(values: ColumnLike, feature: Feature) -> np.ndarray:
    """float64 values of a dense column with missing (None/NaN) replaced by the default."""
    array = _to_numpy(values)
    if array.dtype.kind == "O":
        try:
            array = np.array([np.nan if v is None else v for v in array.tolist()], dtype=np.float64)
        except (TypeError, ValueError):
            raise SpecError(f"feature {feature.name!r}: expected numbers") from None
    elif array.dtype.kind not in "iufb":
        raise SpecError(f"feature {feature.name!r}: expected numbers, got {array.dtype}")
    array = array.astype(np.float64, copy=False)
    missing = ~np.isfinite(array)
    if missing.any():
        array = np.where(missing, float(feature.default), array)
    return array


def transform_dense(values: np.ndarray, feature: Feature) -> np.ndarray:
    """The feature's transform; log1p is sign-preserving so any finite input is defined."""
    if feature.transform == "log1p":
        return np.sign(values) * np.log1p(np.abs(values))
    return values


class FeatureEncoder:
    """Encodes raw columns into model inputs for one feature spec."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._parts: dict[str, list[tuple[str, list[Feature], Callable[..., np.ndarray]]]] = {}
        for group in GROUPS:
            parts = [
                (f"{group}_cat", spec.select(group, "categorical"), self._encode_cat),
                (f"{group}_multi", spec.select(group, "multi_categorical"), self._encode_multi),
                (f"{group}_dense", spec.select(group, "dense"), self._encode_dense),
            ]
            self._parts[group] = [p for p in parts if p[1]]

    def input_names(self, group: str) -> list[str]:
        """Names of the arrays `encode_group` returns for a group (the model's input names)."""
        return [name for name, _, _ in self._parts[group]]

    def encode_group(
        self, group: str, columns: Mapping[str, ColumnLike], rows: int
    ) -> dict[str, np.ndarray]:
        """Encode one input group; a feature absent from `columns` takes its default."""
        return {
            name: encode(features, columns, rows) for name, features, encode in self._parts[group]
        }

    def encode(
        self, columns: Mapping[str, ColumnLike], rows: int, threads: int | None = None
    ) -> dict[str, np.ndarray]:
        """Both groups with one row per impression (the training layout).

        Large inputs encode their parts on a thread pool: numpy and Arrow release the GIL.
        """
        jobs = [part for group in GROUPS for part in self._parts[group]]
        workers = threads if threads is not None else (os.cpu_count() or 1)
        if rows < 50_000 or workers <= 1:
            return {name: encode(features, columns, rows) for name, features, encode in jobs}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {name: pool.submit(encode, f, columns, rows) for name, f, encode in jobs}
            return {name: future.result() for name, future in futures.items()}

    @staticmethod
    def _column(columns: Mapping[str, ColumnLike], feature: Feature, rows: int) -> ColumnLike:
        column = columns.get(feature.name)
        if column is None:
            return np.full(rows, None, dtype=object)
        if len(column) != rows:
            raise SpecError(f"feature {feature.name!r}: expected {rows} values, got {len(column)}")
        return column

    def _encode_cat(
        self, features: list[Feature], columns: Mapping[str, ColumnLike], rows: int
    ) -> np.ndarray:
        if rows == 1:  # the serving user side: per-call numpy overhead would dominate
            values = [self._scalar(columns, f) for f in features]
            return np.array([values], dtype=np.int64)
        out = np.empty((rows, len(features)), dtype=np.int64)
        plain: list[tuple[int, np.ndarray]] = []
        for j, f in enumerate(features):
            column = self._column(columns, f, rows)
            ints = _plain_ints(column)
            dense = None if ints is None else _dense_range_buckets(ints, f.buckets)
            if dense is not None:
                out[:, j] = dense
            elif ints is None:
                out[:, j] = hash_categorical(column, f.buckets, f.name, str(f.default))
            else:
                plain.append((j, ints))
        if plain:  # every integer column in one pass: per-call overhead dominates small batches
            index = [j for j, _ in plain]
            hashes = mix64(np.stack([ints for _, ints in plain], axis=1))
            buckets = np.array([features[j].buckets for j in index], dtype=np.uint64)
            np.remainder(hashes, buckets, out=hashes)
            out[:, index] = hashes.view(np.int64)
        return out

    def _scalar(self, columns: Mapping[str, ColumnLike], feature: Feature) -> int:
        """The bucket of a one-row categorical column, exactly as the column paths compute it."""
        column = self._column(columns, feature, 1)
        if isinstance(column, pa.ChunkedArray | pa.Array):
            column = column.to_pylist()
        if isinstance(column, np.ndarray) and column.ndim != 1:
            raise SpecError(
                f"feature {feature.name!r}: expected one value per row, got shape {column.shape}"
            )
        return hash_value(column[0], feature.name, str(feature.default)) % feature.buckets

    def _encode_multi(
        self, features: list[Feature], columns: Mapping[str, ColumnLike], rows: int
    ) -> np.ndarray:
        blocks = [hash_multi_categorical(self._column(columns, f, rows), f) for f in features]
        return np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]

    def _encode_dense(
        self, features: list[Feature], columns: Mapping[str, ColumnLike], rows: int
    ) -> np.ndarray:
        out = np.empty((rows, len(features)), dtype=np.float32)
        for j, f in enumerate(features):
            out[:, j] = transform_dense(dense_values(self._column(columns, f, rows), f), f)
        return out


def fit_dense_stats(spec: FeatureSpec, columns: Mapping[str, ColumnLike]) -> FeatureSpec:
    """The spec with each dense feature's mean/std fitted on (transformed) training values."""
    stats: dict[str, DenseStats] = {}
    for f in spec.features:
        if f.kind != "dense":
            continue
        if f.name not in columns:
            raise SpecError(f"feature {f.name!r}: no column to fit its statistics on")
        values = transform_dense(dense_values(columns[f.name], f), f)
        if values.size == 0:
            raise SpecError(f"feature {f.name!r}: no rows to fit its statistics on")
        std = float(values.std())
        stats[f.name] = DenseStats(mean=float(values.mean()), std=std if std > 1e-6 else 1.0)
    return spec.with_stats(stats)
