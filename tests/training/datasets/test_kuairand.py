"""KuaiRand import: small CSVs in KuaiRand's exact layout, clean and dirty."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ranker.features import FeatureEncoder
from ranker.schema import FeatureSpec
from training.datasets.kuairand.columns import OUTPUT_SCHEMA
from training.datasets.kuairand.convert import request_ids
from training.datasets.kuairand.importer import import_kuairand
from training.datasets.kuairand.report import ImportReport
from training.errors import DataError

LOG_HEADER = [
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "play_time_ms",
    "duration_ms",
    "profile_stay_time",
    "comment_stay_time",
    "is_profile_enter",
    "is_rand",
    "tab",
]
USER_HEADER = [
    "user_id",
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num",
    "follow_user_num_range",
    "fans_user_num",
    "fans_user_num_range",
    "friend_user_num",
    "friend_user_num_range",
    "register_days",
    "register_days_range",
    *[f"onehot_feat{i}" for i in range(18)],
]
VIDEO_HEADER = [
    "video_id",
    "author_id",
    "video_type",
    "upload_dt",
    "upload_type",
    "visible_status",
    "video_duration",
    "server_width",
    "server_height",
    "music_id",
    "music_type",
    "tag",
]

T = 1_650_520_800_000  # a multiple of 60 s; 2022-04-21 in Beijing
DAY_MS = 86_400_000


def log_row(
    user: object,
    video: object,
    day: object,
    hourmin: object,
    time_ms: object,
    click: object,
    play: object,
    duration: object,
    *,
    rand: int = 0,
    tab: int = 1,
    like: int = 0,
) -> list[object]:
    signals = [like, 0, 0, 0, 0, 0]  # is_like .. long_view
    return [user, video, day, hourmin, time_ms, click, *signals, play, duration, 0, 0, 0, rand, tab]


STANDARD = [
    log_row(1, 10, 20220421, 1000, T, 1, 15000, 20000, like=1),  # request A
    log_row(1, 11, 20220421, 1000, T + 30_000, 0, 3000, 8000),  # request A, watch time zeroed
    log_row(2, 10, 20220421, 1000, T + 10_000, 1, 25000, 20000),  # request B: another user
    log_row(1, 12, 20220421, 1001, T + 60_000, 1, 5000, 9000),  # request C: next window
    log_row(3, 13, 20220420, 2300, T - DAY_MS, 0, 0, 12000),  # video 13 has no features
    log_row(4, 11, 20220420, 2301, T - DAY_MS + 60_000, 1, 4000, ""),  # no user; duration fallback
]
RANDOM = [
    log_row(3, 12, 20220422, 900, T + DAY_MS, 1, 7000, 9000, rand=1, tab=0),
    log_row(2, 11, 20220422, 900, T + DAY_MS + 5000, 0, 0, 8000, rand=1, tab=0),
]
DIRTY = [
    log_row(1, 10, 20220421, 1002, T + 120_000, 1, -5, 20000),  # negative_play_time_ms
    log_row(1, 10, 20220421, 1002, T + 121_000, 1, 100, 0),  # bad_duration
    log_row(2, 13, 20220421, 1002, T + 122_000, 1, 100, ""),  # bad_duration: no fallback
    log_row(1, 10, 20220421, 1002, T + 123_000, "", 100, 20000),  # bad_is_click
    log_row(1, 10, 20220421, 1002, T + 124_000, "NaN", 100, 20000),  # bad_is_click
    log_row(1, 10, 20220421, 1002, T + 125_000, "yes", 100, 20000),  # bad_is_click
    log_row(1, 10, 20220421, 1002, T + 126_000, 1, "abc", 20000),  # bad_play_time_ms
    log_row(1, 10, 20221345, 1002, T + 127_000, 1, 100, 20000),  # bad_date
]
DIRTY_DROPPED = {
    "bad_date": 1,
    "bad_is_click": 3,
    "bad_play_time_ms": 1,
    "negative_play_time_ms": 1,
    "bad_duration": 2,
    "malformed_row": 1,
}

ONEHOT = [1, 2, 2, 1153, 4, 0, 0, 31, 354, 3, 3, 2, 1, 0, 0, 0, 0, 0]
USERS = [
    [1, "high_active", 0, 0, 1, 5, "(0,10]", 312, "[100,1k)", 0, "0", 3624, "730+", *ONEHOT],
    [2, "full_active", 1, 0, 0, 60, "(50,100]", 0, "0", 2, "[1,5)", 40, "31-60", *[0] * 18],
    [3, "UNKNOWN", 0, 1, 0, 0, "0", 1, "[1,10)", 0, "0", 20, "15-30", *[1] * 18],
]
VIDEOS = [
    [10, 100, "NORMAL", "2022-04-01", "ShortImport", 1, 20000.0, 720, 1280, 5000, 4, "12,65"],
    [11, 101, "NORMAL", "2022-04-25", "ShortImport", 1, 8000.0, 720, 1280, 5001, 4, ""],
    [12, 100, "AD", "2022-03-22", "LongImport", 1, 9000.0, 1080, 1920, 5002, 2, "7"],
]


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_dataset(root: Path, standard: list[list[object]] = STANDARD, suffix: str = "pure") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_csv(root / f"log_standard_4_08_to_4_21_{suffix}.csv", LOG_HEADER, standard)
    write_csv(root / f"log_random_4_22_to_5_08_{suffix}.csv", LOG_HEADER, RANDOM)
    write_csv(root / f"user_features_{suffix}.csv", USER_HEADER, USERS)
    write_csv(root / f"video_features_basic_{suffix}.csv", VIDEO_HEADER, VIDEOS)
    return root


def make_dirty(root: Path) -> Path:
    make_dataset(root, STANDARD + DIRTY)
    with (root / "log_standard_4_08_to_4_21_pure.csv").open("a") as f:
        f.write("1,10,20220421\n")  # malformed_row
    return root


def read_days(out: Path) -> dict[str, pa.Table]:
    return {
        d.name: pa.concat_tables(pq.read_table(p) for p in sorted(d.glob("part-*.parquet")))
        for d in sorted(out.glob("day=*"))
    }


def read_all(out: Path) -> pa.Table:
    return pa.concat_tables(read_days(out).values())


def row(table: pa.Table, user: int, item: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = table.to_pylist()
    found = [r for r in rows if r["user_id"] == user and r["item_id"] == item]
    assert len(found) == 1
    return found[0]


@pytest.fixture
def clean(tmp_path: Path) -> tuple[ImportReport, pa.Table]:
    report = import_kuairand(make_dataset(tmp_path / "src"), tmp_path / "out")
    return report, read_all(tmp_path / "out")


def test_clean_import_schema_partitions_and_counts(
    clean: tuple[ImportReport, pa.Table], tmp_path: Path
) -> None:
    report, table = clean
    assert table.schema == OUTPUT_SCHEMA
    assert report.rows_in == report.rows_out == len(table) == len(STANDARD) + len(RANDOM)
    assert report.dropped == {}
    assert report.days == ["2022-04-20", "2022-04-21", "2022-04-22"]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "day=2022-04-20",
        "day=2022-04-21",
        "day=2022-04-22",
        "feature_spec.yaml",
    ]
    assert report.files == sorted(out.glob("day=*/part-*.parquet"))
    assert {d: len(t) for d, t in read_days(out).items()} == {
        "day=2022-04-20": 2,
        "day=2022-04-21": 4,
        "day=2022-04-22": 2,
    }
    assert report.requests == len(np.unique(table.column("request_id").to_numpy()))
    assert report.requests == 7  # rows 1 and 2 of the standard log share a request
    types = {f.name: f.type for f in table.schema}
    assert types["click"] == pa.int8() and types["ts"] == pa.int64()
    assert types["watch_time"] == types["duration"] == pa.float32()
    assert types["tag"] == pa.list_(pa.int64())


def test_labels_follow_the_contract(clean: tuple[ImportReport, pa.Table]) -> None:
    report, table = clean
    first = row(table, 1, 10)
    assert first["click"] == 1 and first["watch_time"] == pytest.approx(15.0)
    assert first["duration"] == pytest.approx(20.0) and first["ts"] == T
    assert first["hour"] == 10 and first["tab"] == 1 and first["is_rand"] == 0
    assert first["is_like"] == 1
    not_clicked = row(table, 1, 11)
    assert not_clicked["watch_time"] == 0.0 and not_clicked["play_time"] == pytest.approx(3.0)
    assert report.notes["watch_time_zeroed_no_click"] == 1
    assert row(table, 2, 10)["watch_time"] == pytest.approx(25.0)  # longer than the video: kept
    assert row(table, 1, 12)["is_rand"] is not None
    random = [r for r in table.to_pylist() if r["ts"] >= T + DAY_MS]
    assert {r["is_rand"] for r in random} == {1} and {r["tab"] for r in random} == {0}
    click, watch = table.column("click").to_numpy(), table.column("watch_time").to_numpy()
    assert np.all(watch[click == 0] == 0) and np.all(watch >= 0)
    assert np.all(table.column("duration").to_numpy() > 0)


def test_joined_features(clean: tuple[ImportReport, pa.Table]) -> None:
    report, table = clean
    first = row(table, 1, 10)
    assert first["user_active_degree"] == "high_active"
    assert first["follow_user_num_range"] == "(0,10]" and first["follow_user_num"] == 5.0
    assert first["is_video_author"] == 1 and first["onehot_feat3"] == 1153
    assert first["author_id"] == 100 and first["video_type"] == "NORMAL"
    assert first["music_id"] == 5000 and first["music_type"] == 4
    assert first["tag"] == [12, 65]
    assert first["upload_age_days"] == 20.0  # 2022-04-01 .. 2022-04-21
    assert row(table, 2, 10)["user_active_degree"] == "full_active"
    assert row(table, 1, 11)["tag"] == []  # empty tag
    assert row(table, 1, 12)["tag"] == [7] and row(table, 1, 12)["video_type"] == "AD"

    no_video = row(table, 3, 13)  # kept; item features null, so the spec defaults apply
    assert no_video["author_id"] is None and no_video["tag"] is None
    assert no_video["upload_age_days"] is None and no_video["duration"] == 12.0
    assert no_video["user_active_degree"] == "UNKNOWN"
    no_user = row(table, 4, 11)
    assert no_user["user_active_degree"] is None and no_user["onehot_feat0"] is None
    assert no_user["duration"] == 8.0  # video_duration: the log has no duration_ms
    assert no_user["upload_age_days"] == 0.0  # uploaded after the impression: clipped
    assert report.notes["video_features_missing"] == 1
    assert report.notes["user_features_missing"] == 1
    assert report.notes["duration_from_video_features"] == 1
    assert "date_differs_from_time_ms" not in report.notes  # the fixture's dates match time_ms


def test_request_id_rule(clean: tuple[ImportReport, pa.Table]) -> None:
    _, table = clean
    a1, a2 = row(table, 1, 10)["request_id"], row(table, 1, 11)["request_id"]
    other_user = row(table, 2, 10)["request_id"]
    next_window = row(table, 1, 12)
    assert a1 == a2  # same user, same 60 s window
    assert other_user != a1 and next_window["request_id"] != a1
    assert np.all(table.column("request_id").to_numpy() >= 0)

    user = np.array([1, 1, 1, 2, 1, 1])
    day = np.array([5, 5, 5, 5, 6, 5])
    ts = np.array([0, 59_999, 60_000, 0, 0, 0])
    ids = request_ids(user, day, ts, 60_000)
    assert ids[0] == ids[1] and ids[5] == ids[0]
    assert len({ids[0], ids[2], ids[3], ids[4]}) == 4  # next window, other user, other day
    assert np.array_equal(request_ids(user, day, ts, 60_000), ids)  # deterministic
    wide = request_ids(user, day, ts, 120_000)
    assert wide[0] == wide[2]


def test_spec_names_existing_columns(clean: tuple[ImportReport, pa.Table]) -> None:
    report, table = clean
    spec = FeatureSpec.load(report.spec_path)
    assert set(spec.names) <= set(table.column_names)
    assert spec["tag"].kind == "multi_categorical" and spec["tag"].side == "item"
    assert spec["hour"].side == spec["tab"].side == "context"
    assert spec["user_id"].side == "user" and spec["item_id"].side == "item"
    assert spec["duration"].transform == spec["upload_age_days"].transform == "log1p"
    assert {f"onehot_feat{i}" for i in range(18)} <= set(spec.names)
    assert "is_rand" not in spec.names and "click" not in spec.names
    for feature in spec.features:
        if feature.kind != "dense":
            assert feature.buckets >= 4


def test_dirty_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    report = import_kuairand(make_dirty(tmp_path / "src"), tmp_path / "out", drop_invalid=True)
    assert report.dropped == DIRTY_DROPPED
    assert report.rows_out == len(STANDARD) + len(RANDOM)
    assert report.rows_in == report.rows_out + sum(report.dropped.values())
    assert len(read_all(tmp_path / "out")) == report.rows_out
    assert "dropped bad_is_click: 3" in report.summary()


def test_dirty_rows_raise_without_drop_invalid(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", STANDARD + DIRTY[3:6])  # three bad is_click rows
    with pytest.raises(DataError) as info:
        import_kuairand(src, tmp_path / "out", chunk_rows=1)  # each bad row in its own chunk
    message = str(info.value)
    assert "log_standard_4_08_to_4_21_pure.csv" in message
    assert "'is_click'" in message and "(3 bad rows)" in message
    assert info.value.column == "is_click" and info.value.bad_rows == 3
    assert not list((tmp_path / "out").glob("day=*/*.parquet"))  # nothing half-written left


def test_all_reasons_are_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        import_kuairand(make_dirty(tmp_path / "src"), tmp_path / "out")
    message = str(info.value)
    for column in ("date", "is_click", "play_time_ms", "duration_ms"):
        assert column in message
    assert "wrong number of fields" in message


def test_missing_column_is_an_error(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src")
    header = [c for c in LOG_HEADER if c != "is_click"]
    rows = [[v for c, v in zip(LOG_HEADER, r, strict=True) if c != "is_click"] for r in RANDOM]
    write_csv(src / "log_random_4_22_to_5_08_pure.csv", header, rows)
    with pytest.raises(DataError) as info:
        import_kuairand(src, tmp_path / "out")
    assert "log_random_4_22_to_5_08_pure.csv" in str(info.value)
    assert info.value.column == "is_click"


def test_missing_feature_column_is_an_error(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src")
    write_csv(src / "video_features_basic_pure.csv", VIDEO_HEADER[:-1], [v[:-1] for v in VIDEOS])
    with pytest.raises(DataError, match=r"video_features_basic_pure\.csv") as info:
        import_kuairand(src, tmp_path / "out")
    assert info.value.column == "tag"


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\xff\xfe\x00garbage\x00\n1,2\n"])
def test_unparsable_csv_names_the_file(tmp_path: Path, content: bytes) -> None:
    src = make_dataset(tmp_path / "src")
    (src / "log_random_4_22_to_5_08_pure.csv").write_bytes(content)
    with pytest.raises(DataError, match=r"log_random_4_22_to_5_08_pure\.csv"):
        import_kuairand(src, tmp_path / "out")


def test_chunking_does_not_change_the_output(tmp_path: Path) -> None:
    src = make_dirty(tmp_path / "src")
    one = import_kuairand(src, tmp_path / "one", drop_invalid=True)
    many = import_kuairand(
        src, tmp_path / "many", drop_invalid=True, chunk_rows=1, block_size=700, rows_per_part=2
    )
    assert len(many.files) > len(one.files)
    assert (one.rows_in, one.rows_out, one.dropped, one.requests, one.days, one.notes) == (
        many.rows_in,
        many.rows_out,
        many.dropped,
        many.requests,
        many.days,
        many.notes,
    )
    a, b = read_days(tmp_path / "one"), read_days(tmp_path / "many")
    assert a.keys() == b.keys()
    for day in a:
        assert a[day].equals(b[day])


def test_version_folder_with_data_subfolder_and_existing_output(tmp_path: Path) -> None:
    make_dataset(tmp_path / "KuaiRand-27K" / "data", suffix="27k")
    report = import_kuairand(tmp_path / "KuaiRand-27K", tmp_path / "out")
    assert report.rows_out == len(STANDARD) + len(RANDOM)
    with pytest.raises(DataError, match="already holds"):
        import_kuairand(tmp_path / "KuaiRand-27K", tmp_path / "out")


def test_dirty_feature_values_become_nulls_and_are_counted(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src")
    videos = [
        *VIDEOS[:2],
        [12, "x", "AD", "someday", "LongImport", 1, 9000.0, 1, 1, 5002, 2, "7,y"],
    ]
    write_csv(src / "video_features_basic_pure.csv", VIDEO_HEADER, videos)
    report = import_kuairand(src, tmp_path / "out")
    video = row(read_all(tmp_path / "out"), 1, 12)
    assert video["author_id"] is None and video["upload_age_days"] is None
    assert video["tag"] == [7] and video["video_type"] == "AD"
    assert report.notes["video_features_basic_invalid_values"] == 3


def test_gzip_log_without_is_rand_column(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src")
    keep = [i for i, c in enumerate(LOG_HEADER) if c != "is_rand"]
    path = src / "log_random_4_22_to_5_08_pure.csv"
    write_csv(path, [LOG_HEADER[i] for i in keep], [[r[i] for i in keep] for r in RANDOM])
    with path.open("rb") as f, gzip.open(f"{path}.gz", "wb") as g:
        g.write(f.read())
    path.unlink()
    report = import_kuairand(src, tmp_path / "out", progress=True)
    random = read_days(tmp_path / "out")["day=2022-04-22"]
    assert random.column("is_rand").to_pylist() == [1, 1]  # from the file name
    assert report.rows_out == len(STANDARD) + len(RANDOM)


def test_sparse_ids_join_like_dense_ids(tmp_path: Path) -> None:
    def shift(rows: list[list[object]], column: int) -> list[list[object]]:
        return [[*r[:column], int(str(r[column])) + 10**12, *r[column + 1 :]] for r in rows]

    src = make_dataset(tmp_path / "src", shift(STANDARD, 1))
    write_csv(src / "log_random_4_22_to_5_08_pure.csv", LOG_HEADER, shift(RANDOM, 1))
    write_csv(src / "video_features_basic_pure.csv", VIDEO_HEADER, shift(VIDEOS, 0))
    import_kuairand(src, tmp_path / "sparse")
    import_kuairand(make_dataset(tmp_path / "dense_src"), tmp_path / "dense")
    sparse, dense = read_all(tmp_path / "sparse"), read_all(tmp_path / "dense")
    assert sparse.column("item_id").to_pylist() == [
        i + 10**12 for i in dense["item_id"].to_pylist()
    ]
    assert sparse.drop_columns("item_id").equals(dense.drop_columns("item_id"))


def test_undecodable_row_names_the_file(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src")
    with (src / "log_random_4_22_to_5_08_pure.csv").open("ab") as f:
        f.write(b"1,10,20220422,900,1,1,0,0,0,0,0,0,5,5,0,0,0,1,\xff\xfe\n")
    with pytest.raises(DataError, match=r"log_random_4_22_to_5_08_pure\.csv: cannot parse CSV"):
        import_kuairand(src, tmp_path / "out")


def test_tables_are_sized_to_the_imported_values(clean: tuple[ImportReport, pa.Table]) -> None:
    report, table = clean
    spec = FeatureSpec.load(report.spec_path)
    reasons = spec.extra["bucket_sizing"]
    encoded = FeatureEncoder(spec).encode(
        {name: table[name] for name in spec.names}, table.num_rows
    )
    cat_columns = {g: spec.select(g, "categorical") for g in ("user", "item")}
    for group, features in cat_columns.items():
        for j, feature in enumerate(features):
            values = table[feature.name].to_pylist()
            distinct = len(set(values))  # None (missing) is a value: it takes the default's row
            assert reasons[feature.name].startswith(f"{len(set(values) | {None})} values seen")
            assert feature.buckets < 1024  # sized to the data, not to KuaiRand-27K's millions
            rows = encoded[f"{group}_cat"][:, j]
            assert len(np.unique(rows)) == distinct, f"{feature.name}: two values share a row"
    tags = {t for ts in table["tag"].to_pylist() if ts for t in ts}
    tag_rows = encoded["item_multi"]
    assert len(np.unique(tag_rows[tag_rows > 0])) == len(tags)
