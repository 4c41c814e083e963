"""Write a simulated impression log: `OUT/day=YYYY-MM-DD/part-0.parquet`, one file per day.

The ground truth lives in `sim.world.World`; this module samples a day of traffic from it,
draws labels and writes them in the impression-log contract (DESIGN.md) with the features named in
`ranker/simulator_spec.yaml`. The world and every day have their own random streams derived from
the seed, so the same config always writes the same tables.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from ranker.progress import progress_bar
from ranker.schema import load_default_spec
from ranker.table_sizing import CardinalityCounter, Sizing
from sim.tables import LOG_SCHEMA, ORACLE_SCHEMA, tags_array, write_parquet
from sim.world import TABS, SimulatorConfig, World

__all__ = ["LOG_SCHEMA", "ORACLE_SCHEMA", "SimulationSummary", "SimulatorConfig", "World",
           "simulate", "simulate_day", "spec_sizing"]  # fmt: skip


@dataclass(frozen=True)
class SimulationSummary:
    """What a simulation wrote, for printing and for tests."""

    rows: int
    requests: int
    days: list[str]  # ISO dates, one partition each
    files: list[Path]
    click_rate: float
    mean_watch_time: float  # seconds, over all impressions (0 for non-clicks)
    mean_completion_given_click: float  # mean of min(watch_time / duration, 1) over clicks
    users_seen: int  # distinct users with at least one request
    items_seen: int  # distinct items shown at least once
    new_items_seen: int  # of those, items uploaded after the first day
    seconds: float  # wall time

    def lines(self) -> list[str]:
        """Human-readable report, one fact per line."""
        return [
            f"wrote {self.rows:,} impressions in {self.requests:,} requests over "
            f"{len(self.days)} days ({self.days[0]} .. {self.days[-1]}) in {self.seconds:.1f} s",
            f"click rate {self.click_rate:.3f}, mean watch time {self.mean_watch_time:.2f} s, "
            f"mean completion given click {self.mean_completion_given_click:.3f}",
            f"{self.users_seen:,} users, {self.items_seen:,} items shown "
            f"({self.new_items_seen:,} uploaded during the simulation)",
            *(str(path) for path in self.files),
        ]


def _day_dates(config: SimulatorConfig) -> list[str]:
    start = date.fromisoformat(config.start_date)
    return [(start + timedelta(days=day)).isoformat() for day in range(config.days)]


def simulate_day(world: World, day: int) -> pa.Table:
    """One day of impressions, sorted by time; request ids are unique across days."""
    config = world.config
    rng = np.random.default_rng([config.seed, 1, day])
    n = config.requests_per_day
    requests = world.sample_requests(day, n, rng)
    sizes = rng.integers(config.min_impressions, config.max_impressions + 1, n)
    items = world.sample_candidates(day, sizes, rng)
    row = np.repeat(np.arange(n), sizes)  # request of each impression
    users, hour, tab, ts = (a[row] for a in (requests.user_idx, requests.hour, requests.tab,
                                              requests.ts))  # fmt: skip
    expected = world.expected_outcomes(users, items, hour, tab, ts)
    click, watch_time = world.draw_outcomes(expected, rng)
    item_features = world.item_features(items, ts)
    columns: dict[str, object] = {
        "request_id": day * n + row,
        "user_id": users,
        "item_id": items,
        "ts": ts,
        **world.user_features(users),
        "hour": hour,
        "tab": tab,
        **item_features,
        "tags": tags_array(item_features["tags"]),
        "click": click,
        "watch_time": watch_time,
    }
    schema = LOG_SCHEMA
    if config.oracle:
        schema = pa.unify_schemas([LOG_SCHEMA, ORACLE_SCHEMA])
        columns["oracle_click"] = expected.p_click
        columns["oracle_watch_time"] = expected.watch_time
        columns["oracle_completion"] = expected.completion
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def spec_sizing(config: SimulatorConfig) -> dict[str, Sizing]:
    """Bucket counts for the simulator spec's categorical features from the values the world
    can emit (`ranker.table_sizing`); `ranker/simulator_spec.yaml` holds those of the default config."""
    world = World(config)
    values: dict[str, np.ndarray] = {
        "user_id": np.arange(config.users),
        **{k: np.unique(v) for k, v in world.user_features(np.arange(config.users)).items()},
        "hour": np.arange(24),
        "tab": np.arange(TABS),
        "item_id": np.arange(config.items),
        "author_id": np.unique(world.item_author),
        "category": np.unique(world.item_category),
        "tags": np.unique(world.item_tags[world.item_tags >= 0]),
    }
    spec = load_default_spec()
    counter = CardinalityCounter({name: spec[name] for name in values})
    for name, array in values.items():
        counter.add(name, pa.array(array))
    return counter.sizing()


def simulate(config: SimulatorConfig, out_dir: Path, progress: bool = False) -> SimulationSummary:
    """Simulate `config.days` days of traffic and write one Parquet partition per day.

    Existing files at the same partition paths are replaced; other files in `out_dir` are left.
    """
    started = time.perf_counter()
    world = World(config)
    out_dir = Path(out_dir)
    dates = _day_dates(config)
    files: list[Path] = []
    rows = clicks = 0
    watch_sum = completion_sum = 0.0
    users_seen = np.zeros(config.users, dtype=bool)
    items_seen = np.zeros(config.items, dtype=bool)
    for day in progress_bar(range(config.days), desc="simulate", unit="day", enabled=progress):
        table = simulate_day(world, day)
        path = out_dir / f"day={dates[day]}" / "part-0.parquet"
        write_parquet(table, path)
        files.append(path)
        click = table["click"].to_numpy()
        watch = table["watch_time"].to_numpy().astype(np.float64)
        duration = table["duration"].to_numpy()
        rows += len(click)
        clicks += int(click.sum())
        watch_sum += float(watch.sum())
        completion_sum += float(np.minimum(watch / duration, 1.0).sum())
        users_seen[table["user_id"].to_numpy()] = True
        items_seen[table["item_id"].to_numpy()] = True
    return SimulationSummary(
        rows=rows,
        requests=config.days * config.requests_per_day,
        days=dates,
        files=files,
        click_rate=clicks / rows,
        mean_watch_time=watch_sum / rows,
        mean_completion_given_click=completion_sum / max(clicks, 1),
        users_seen=int(users_seen.sum()),
        items_seen=int(items_seen.sum()),
        new_items_seen=int((items_seen & (world.item_upload_day > 0)).sum()),
        seconds=time.perf_counter() - started,
    )
