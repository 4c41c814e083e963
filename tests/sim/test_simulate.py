"""Tests of the impression-log simulator: contract, determinism and the properties training needs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sim.simulate import (
    LOG_SCHEMA,
    ORACLE_SCHEMA,
    SimulationSummary,
    SimulatorConfig,
    World,
    simulate,
)
from sim.world import DAY_MS, HOUR_MS

SMALL = SimulatorConfig(
    users=400, items=3000, authors=150, days=3, requests_per_day=400, seed=7, oracle=True
)


def _read(summary: SimulationSummary) -> pa.Table:
    return pa.concat_tables(pq.read_table(path) for path in summary.files)


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank-based ROC AUC (Mann-Whitney U); ties are rare with continuous scores."""
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    pos = label == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimulationSummary, pa.Table]:
    summary = simulate(SMALL, tmp_path_factory.mktemp("sim"))
    return summary, _read(summary)


@pytest.fixture(scope="module")
def log(run: tuple[SimulationSummary, pa.Table]) -> dict[str, np.ndarray]:
    table = run[1]
    return {name: table[name].to_numpy() for name in table.column_names if name != "tags"}


def test_same_seed_gives_identical_tables_and_other_seed_differs(tmp_path: Path) -> None:
    config = replace(SMALL, days=2, requests_per_day=100)
    first = simulate(config, tmp_path / "a")
    second = simulate(config, tmp_path / "b")
    other = simulate(replace(config, seed=8), tmp_path / "c")
    for a, b in zip(first.files, second.files, strict=True):
        assert pq.read_table(a).equals(pq.read_table(b))
    assert not _read(first).equals(_read(other))


def test_partition_layout_and_schema(tmp_path: Path) -> None:
    summary = simulate(replace(SMALL, days=2, requests_per_day=50, oracle=False), tmp_path)
    assert summary.days == ["2026-01-01", "2026-01-02"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "day=2026-01-01",
        "day=2026-01-01/part-0.parquet",
        "day=2026-01-02",
        "day=2026-01-02/part-0.parquet",
    ]
    for path in summary.files:
        assert pq.read_schema(path).remove_metadata() == LOG_SCHEMA


def test_oracle_schema_and_rows_sorted_within_their_day(
    run: tuple[SimulationSummary, pa.Table],
) -> None:
    summary, _ = run
    start = 1767225600000  # 2026-01-01T00:00:00Z
    for day, path in enumerate(summary.files):
        table = pq.read_table(path)
        assert table.schema.remove_metadata() == pa.unify_schemas([LOG_SCHEMA, ORACLE_SCHEMA])
        ts = table["ts"].to_numpy()
        assert np.all(np.diff(ts) >= 0)
        assert ts.min() >= start + day * DAY_MS and ts.max() < start + (day + 1) * DAY_MS
        assert np.array_equal(table["hour"].to_numpy(), (ts % DAY_MS) // HOUR_MS)


def test_summary_matches_the_files(run: tuple[SimulationSummary, pa.Table]) -> None:
    summary, table = run
    assert summary.rows == table.num_rows
    assert summary.requests == SMALL.days * SMALL.requests_per_day
    assert summary.click_rate == pytest.approx(table["click"].to_numpy().mean())
    assert summary.mean_watch_time == pytest.approx(table["watch_time"].to_numpy().mean(), 1e-5)
    assert all(summary.lines())


def test_labels_and_features_are_valid(
    run: tuple[SimulationSummary, pa.Table], log: dict[str, np.ndarray]
) -> None:
    click, watch, duration = log["click"], log["watch_time"], log["duration"]
    assert set(np.unique(click)) == {0, 1}
    assert np.array_equal(watch == 0, click == 0)
    assert np.all(watch >= 0) and np.all(watch <= duration)
    assert np.all((duration >= 5) & (duration <= 600))
    assert np.all(log["upload_age_days"] >= 0)
    assert set(log["user_active_degree"]) <= {"high_active", "full_active", "middle_active",
                                              "low_active"}  # fmt: skip
    assert set(log["device"]) <= {"android", "ios", "web"}
    assert log["hour"].min() >= 0 and log["hour"].max() <= 23
    for name in ("user_code_0", "user_code_1", "user_code_2", "category", "follower_bucket"):
        assert log[name].min() >= 0
    tag_counts = pc.list_value_length(run[1]["tags"]).to_numpy()
    assert tag_counts.min() >= 1 and tag_counts.max() <= 4


def test_requests_are_well_formed(log: dict[str, np.ndarray]) -> None:
    request = log["request_id"]
    starts = np.flatnonzero(np.r_[True, request[1:] != request[:-1]])
    sizes = np.diff(np.r_[starts, len(request)])
    # Rows of a request are contiguous, so contiguous runs are exactly the distinct ids.
    assert len(starts) == len(np.unique(request)) == SMALL.days * SMALL.requests_per_day
    assert sizes.min() >= SMALL.min_impressions and sizes.max() <= SMALL.max_impressions
    first = np.repeat(starts, sizes)
    for name in ("user_id", "ts", "hour", "tab"):
        assert np.array_equal(log[name], log[name][first]), name
    pairs = request * (log["item_id"].max() + 1) + log["item_id"]
    assert len(np.unique(pairs)) == len(pairs)  # no item twice in one request


def test_oracle_predicts_clicks(log: dict[str, np.ndarray]) -> None:
    assert _auc(log["oracle_click"], log["click"]) > 0.65


def test_oracle_means_match_sampled_labels(log: dict[str, np.ndarray]) -> None:
    completion = np.minimum(log["watch_time"] / log["duration"], 1.0)
    assert log["click"].mean() == pytest.approx(log["oracle_click"].mean(), rel=0.03)
    assert log["watch_time"].mean() == pytest.approx(log["oracle_watch_time"].mean(), rel=0.08)
    assert completion.mean() == pytest.approx(log["oracle_completion"].mean(), rel=0.05)


def test_click_rate_in_target_range(log: dict[str, np.ndarray]) -> None:
    assert 0.2 <= log["click"].mean() <= 0.4


def test_tasks_are_related_but_not_identical(log: dict[str, np.ndarray]) -> None:
    p_click = log["oracle_click"].astype(np.float64)
    given_click = log["oracle_completion"] / p_click
    assert abs(np.corrcoef(p_click, given_click)[0, 1]) < 0.95
    _, index = np.unique(log["item_id"], return_inverse=True)
    counts = np.bincount(index)
    per_item = [np.bincount(index, weights=x) / counts for x in (p_click, given_click)]
    assert abs(np.corrcoef(*per_item)[0, 1]) < 0.9


def test_loss_scales_differ_by_orders_of_magnitude(log: dict[str, np.ndarray]) -> None:
    rate = log["click"].mean()
    bce = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    mse = np.mean((log["watch_time"] - log["watch_time"].mean()) ** 2)
    assert mse > 50 * bce


def test_new_items_appear_only_from_their_upload_day(
    run: tuple[SimulationSummary, pa.Table],
) -> None:
    summary, _ = run
    world = World(SMALL)
    seen_before: set[int] = set()
    late = 0
    for day, path in enumerate(summary.files):
        items = np.unique(pq.read_table(path, columns=["item_id"])["item_id"].to_numpy())
        assert np.all(world.item_upload_day[items] <= day)
        late += len(set(items.tolist()) - seen_before) if day else 0
        seen_before |= set(items.tolist())
    assert summary.new_items_seen > 0 and late > 0
    assert np.any(world.item_trend[:, -1] != 0)  # popularity drifts


def test_world_answers_a_closed_loop_request() -> None:
    world = World(SMALL)
    rng = np.random.default_rng(0)
    requests = world.sample_requests(day=1, n=5, rng=rng)
    assert np.all(np.diff(requests.ts) >= 0)
    candidates = world.sample_candidates(1, np.array([20]), rng)
    user = requests.user_idx[0]
    expected = world.expected_outcomes(
        user, candidates, requests.hour[0], requests.tab[0], requests.ts[0]
    )
    assert expected.p_click.shape == (20,)
    assert np.all((expected.p_click > 0) & (expected.p_click < 1))
    assert np.allclose(expected.watch_time, expected.completion * expected.duration)
    click, watch = world.draw_outcomes(expected, rng)
    assert click.dtype == np.int8 and watch.dtype == np.float32
    assert set(world.item_features(candidates, requests.ts[:1])) == {
        "author_id", "category", "tags", "duration", "upload_age_days"
    }  # fmt: skip
    assert world.user_features(np.array([user]))["device"].shape == (1,)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("users", 0),
        ("items", -1),
        ("authors", 0),
        ("days", 0),
        ("requests_per_day", 0),
        ("min_impressions", 0),
        ("max_impressions", 5),
        ("start_date", "2026-13-01"),
        ("seed", -1),
        ("new_item_fraction", 1.5),
        ("popularity_mix", -0.1),
        ("latent_dim", 2),
        ("popularity_walk", -1.0),
        ("completion_concentration", 0.0),
        ("task_conflict", -0.1),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        replace(SMALL, **{field: value})


def test_too_few_items_for_a_request_is_rejected() -> None:
    with pytest.raises(ValueError, match="items"):
        SimulatorConfig(items=30, max_impressions=30)


def test_task_conflict_sets_how_clickbait_splits_click_and_completion() -> None:
    """Per item, P(click) and E[completion | click] move apart as the conflict grows."""
    rng = np.random.default_rng(0)
    corr = {}
    for conflict in (0.0, 1.0):
        world = World(replace(SMALL, task_conflict=conflict))
        users = rng.integers(0, SMALL.users, 20_000)
        items = np.repeat(np.arange(SMALL.items), 20_000 // SMALL.items + 1)[:20_000]
        out = world.expected_outcomes(users, items, 12, 0, world.start_ms)
        counts = np.bincount(items)
        per_item = [np.bincount(items, weights=x) / counts for x in
                    (out.p_click, out.completion_given_click)]  # fmt: skip
        corr[conflict] = np.corrcoef(*per_item)[0, 1]
    assert corr[1.0] < corr[0.0] - 0.2
