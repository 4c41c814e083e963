"""Write a simulated world as KuaiRand CSVs (`log_standard_*.csv`, `user_features*.csv`,
`video_features_basic*.csv`), so `ranker import-kuairand` and the training benchmarks run on a
KuaiRand-layout log of any size with a known ground truth.

    python -m benchmarks.kuairand_layout OUT [--users 2000 --items 1500 --days 14 --requests 2460]

Labels and features come from `sim.world` (one request = one user at one time, 10-30
impressions); the mapping to KuaiRand's columns: video_id = item, play_time_ms = watch time (0 when
not clicked), duration_ms = the video's duration, hourmin = Beijing time of day, tab = tab; the user
table carries the activity degree, follower counts and the user codes (onehot_feat1..3, the device
in onehot_feat0); the video table the author, the category (as upload_type and music_type), a
music id drawn per author, tags, duration and upload date.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from sim.simulate import SimulatorConfig, World, simulate_day
from sim.world import DEVICES

BEIJING_MS = 8 * 3_600_000
ONEHOT = 18


def write_kuairand_layout(config: SimulatorConfig, out: Path) -> int:
    """Write the world of `config` as KuaiRand CSVs into `out`; returns the log rows written."""
    out.mkdir(parents=True, exist_ok=True)
    world = World(config)
    _write_users(world, out / "user_features_sim.csv")
    _write_videos(world, out / "video_features_basic_sim.csv")
    rows = 0
    log = out / "log_standard_sim.csv"
    with pacsv.CSVWriter(log, _log_schema()) as writer:
        for day in range(config.days):
            table = _log_table(simulate_day(world, day))
            writer.write_table(table)
            rows += table.num_rows
    return rows


def _log_schema() -> pa.Schema:
    ints = [
        "user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow",
        "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms",
        "profile_stay_time", "comment_stay_time", "is_profile_enter", "is_rand", "tab",
    ]  # fmt: skip
    return pa.schema([(name, pa.int64()) for name in ints])


def _log_table(day: pa.Table) -> pa.Table:
    ts = day["ts"].to_numpy()
    local = ts + BEIJING_MS
    dates = (local // 86_400_000).astype("datetime64[D]")
    yyyymmdd = np.char.replace(np.datetime_as_string(dates), "-", "").astype(np.int64)
    minute = (local % 86_400_000) // 60_000
    click = day["click"].to_numpy().astype(np.int64)
    zeros = np.zeros(len(ts), dtype=np.int64)
    columns = {
        "user_id": day["user_id"].to_numpy(),
        "video_id": day["item_id"].to_numpy(),
        "date": yyyymmdd,
        "hourmin": (minute // 60) * 100 + minute % 60,
        "time_ms": ts,
        "is_click": click,
        **{k: zeros for k in ("is_like", "is_follow", "is_comment", "is_forward", "is_hate")},
        "long_view": zeros,
        "play_time_ms": np.round(day["watch_time"].to_numpy() * 1000).astype(np.int64),
        "duration_ms": np.round(day["duration"].to_numpy() * 1000).astype(np.int64),
        "profile_stay_time": zeros,
        "comment_stay_time": zeros,
        "is_profile_enter": zeros,
        "is_rand": zeros,
        "tab": day["tab"].to_numpy(),
    }
    return pa.Table.from_pydict(columns, schema=_log_schema())


def _write_users(world: World, path: Path) -> None:
    users = np.arange(world.config.users)
    features = world.user_features(users)
    followers = features["follower_bucket"].astype(np.int64)
    counts = (2**followers - 1).astype(np.int64)
    device = np.zeros(len(users), dtype=np.int64)
    for index, name in enumerate(DEVICES):
        device[features["device"] == name] = index
    onehot = [device, *(features[f"user_code_{k}"] for k in range(3))]
    onehot += [np.zeros(len(users), dtype=np.int64)] * (ONEHOT - len(onehot))
    ranges = np.array([f"bucket_{b}" for b in range(16)])
    columns = {
        "user_id": users,
        "user_active_degree": features["user_active_degree"],
        "is_lowactive_period": np.zeros(len(users), dtype=np.int64),
        "is_live_streamer": np.zeros(len(users), dtype=np.int64),
        "is_video_author": np.zeros(len(users), dtype=np.int64),
        "follow_user_num": counts,
        "follow_user_num_range": ranges[followers],
        "fans_user_num": counts * 3,
        "fans_user_num_range": ranges[np.minimum(followers + 1, 15)],
        "friend_user_num": counts // 2,
        "friend_user_num_range": ranges[followers // 2],
        "register_days": 30 + 40 * followers,
        "register_days_range": ranges[followers // 3],
        **{f"onehot_feat{i}": np.asarray(v) for i, v in enumerate(onehot)},
    }
    pacsv.write_csv(pa.table(columns), path)


def _write_videos(world: World, path: Path) -> None:
    items = np.arange(world.config.items)
    category = world.item_category
    tags = world.item_tags
    tag_text = [",".join(str(t) for t in row if t >= 0) for row in tags]
    upload_day = (world.item_upload_ms // 86_400_000).astype("datetime64[D]")
    rng = np.random.default_rng([world.config.seed, 7])
    music_of_author = rng.integers(0, 5 * world.config.authors, world.config.authors)
    columns = {
        "video_id": items,
        "author_id": world.item_author,
        "video_type": np.where(world.item_clickbait > 1.0, "AD", "NORMAL"),
        "upload_dt": np.datetime_as_string(upload_day),
        "upload_type": np.array([f"Type{c}" for c in category]),
        "visible_status": np.ones(len(items), dtype=np.int64),
        "video_duration": np.round(world.item_duration * 1000).astype(np.int64),
        "server_width": np.full(len(items), 720),
        "server_height": np.full(len(items), 1280),
        "music_id": music_of_author[world.item_author],
        "music_type": category % 8,
        "tag": np.array(tag_text),
    }
    pacsv.write_csv(pa.table(columns), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--authors", type=int, default=300)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--requests", type=int, default=2460, help="requests per day")
    args = parser.parse_args()
    config = SimulatorConfig(
        users=args.users,
        items=args.items,
        authors=args.authors,
        days=args.days,
        requests_per_day=args.requests,
    )
    rows = write_kuairand_layout(config, args.out)
    print(f"wrote {rows:,} impressions in KuaiRand layout to {args.out}")


if __name__ == "__main__":
    main()
