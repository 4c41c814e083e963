"""KuaiRand's input columns, the imported log's schema and its feature spec."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

import pyarrow as pa

from ranker.schema import Feature, FeatureSpec, Side
from ranker.table_sizing import Sizing

SPEC_FILE = "feature_spec.yaml"


LOG_REQUIRED = (
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "play_time_ms",
    "tab",
)


SIGNALS = (
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "is_profile_enter",
)


LOG_COLUMNS = (*LOG_REQUIRED, "duration_ms", "is_rand", *SIGNALS)


USER_STR = (
    "user_active_degree",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
)


USER_FLAGS = ("is_lowactive_period", "is_live_streamer", "is_video_author")


# Cardinalities of onehot_feat0..17 as documented for KuaiRand.
ONEHOT_SIZES = (2, 7, 50, 1471, 15, 34, 3, 118, 454, 7, 5, 5, 2, 2, 2, 2, 2, 2)


USER_ONEHOT = tuple(f"onehot_feat{i}" for i in range(len(ONEHOT_SIZES)))


USER_COUNTS = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")


USER_COLUMNS = ("user_id", *USER_STR, *USER_FLAGS, *USER_ONEHOT, *USER_COUNTS)


VIDEO_COLUMNS = (
    "video_id",
    "author_id",
    "video_type",
    "upload_dt",
    "upload_type",
    "video_duration",
    "music_id",
    "music_type",
    "tag",
)


# Row checks in the order they apply: (reason, column, what is wrong).
ROW_CHECKS: tuple[tuple[str, str | None, str], ...] = (
    ("bad_user_id", "user_id", "is missing or not an integer"),
    ("bad_video_id", "video_id", "is missing or not an integer"),
    ("bad_time_ms", "time_ms", "is missing or not an integer"),
    ("bad_date", "date", "is missing or not a YYYYMMDD date"),
    ("bad_is_click", "is_click", "is missing or not 0/1"),
    ("bad_play_time_ms", "play_time_ms", "is missing or not a number"),
    ("negative_play_time_ms", "play_time_ms", "is negative"),
    ("bad_duration", "duration_ms", "is <= 0 or not a number, or missing with no video_duration"),
    ("malformed_row", None, "has the wrong number of fields"),
)


USER_FIELDS = [
    *[pa.field(c, pa.string()) for c in USER_STR],
    *[pa.field(c, pa.int8()) for c in USER_FLAGS],
    *[pa.field(c, pa.int32()) for c in USER_ONEHOT],
    *[pa.field(c, pa.float32()) for c in USER_COUNTS],
]


VIDEO_FIELDS = [
    pa.field("author_id", pa.int64()),
    pa.field("video_type", pa.string()),
    pa.field("upload_type", pa.string()),
    pa.field("music_id", pa.int64()),
    pa.field("music_type", pa.int32()),
    pa.field("tag", pa.list_(pa.int64())),
]


OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("ts", pa.int64(), nullable=False),
        pa.field("click", pa.int8(), nullable=False),
        pa.field("watch_time", pa.float32(), nullable=False),
        pa.field("duration", pa.float32(), nullable=False),
        pa.field("play_time", pa.float32(), nullable=False),
        pa.field("hour", pa.int8()),
        pa.field("tab", pa.int32()),
        pa.field("is_rand", pa.int8()),
        *USER_FIELDS,
        *VIDEO_FIELDS,
        pa.field("upload_age_days", pa.float32()),
        *[pa.field(c, pa.int8()) for c in SIGNALS],
    ]
)


USER_SCHEMA = pa.schema([pa.field("user_id", pa.int64()), *USER_FIELDS])


VIDEO_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.int64()),
        *VIDEO_FIELDS,
        pa.field("upload_day", pa.int32()),  # days since 1970-01-01
        pa.field("video_duration", pa.float64()),  # seconds
    ]
)


EPOCH = date(1970, 1, 1).toordinal()


DAY_MS = 86_400_000


BEIJING_OFFSET_MS = 8 * 3_600_000


def kuairand_spec(
    request_window_ms: int = 60_000, sizing: Mapping[str, Sizing] | None = None
) -> FeatureSpec:
    """The feature spec of an imported KuaiRand log. With `sizing` (what the import observed,
    `ranker.table_sizing`) each categorical feature gets its sized bucket count and the reason is
    kept in `extra.bucket_sizing`; without, the fixed sizes below (made for KuaiRand-27K)."""
    cat: list[tuple[str, Side, int]] = [
        ("user_id", "user", 1 << 17),  # 27,285 users
        *[(c, "user", 8) for c in ("user_active_degree", *USER_FLAGS)],
        *[(c, "user", 16) for c in USER_STR[1:]],
        *[(c, "user", _buckets(n)) for c, n in zip(USER_ONEHOT, ONEHOT_SIZES, strict=True)],
        ("hour", "context", 64),
        ("tab", "context", 32),  # 15 tabs
        ("item_id", "item", 1 << 20),  # 32M videos, ~1M of them shown often
        ("author_id", "item", 1 << 19),
        ("video_type", "item", 8),
        ("upload_type", "item", 128),  # ~40 upload types
        ("music_id", "item", 1 << 18),
        ("music_type", "item", 32),
    ]
    sizing = dict(sizing or {})
    features = [
        Feature(name, side, "categorical", buckets=sizing[name].buckets if name in sizing else b)
        for name, side, b in cat
    ]
    tag_buckets = sizing["tag"].buckets if "tag" in sizing else 256
    features.append(Feature("tag", "item", "multi_categorical", buckets=tag_buckets, max_len=4))
    features += [Feature(c, "user", "dense", transform="log1p", default=0.0) for c in USER_COUNTS]
    features.append(Feature("duration", "item", "dense", transform="log1p", default=30.0))
    features.append(Feature("upload_age_days", "item", "dense", transform="log1p", default=0.0))
    extra = {
        "source": "KuaiRand",
        "request_window_ms": request_window_ms,
        "extra_columns": ["play_time", "is_rand", *SIGNALS],
    }
    if sizing:
        extra["bucket_sizing"] = {name: sizing[name].reason for name in sorted(sizing)}
    return FeatureSpec(features=tuple(features), name="kuairand", extra=extra)


def _buckets(cardinality: int) -> int:
    """A power of two at least twice the number of values."""
    return max(4, 1 << (2 * cardinality - 1).bit_length())
