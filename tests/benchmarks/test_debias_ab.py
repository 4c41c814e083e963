"""The debiasing loop at its tiny size, on the real parts: service, traffic, build-log, retrain with
the gate, the A/B of both retrained models. Its statistics need the full size (docs/results.md);
this checks that every stage hands the next what it needs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq

from benchmarks.debias_ab import (
    ARMS,
    LAYER,
    SIZES,
    VARIANTS,
    UserSums,
    cuped_difference,
    difference,
    retrain_window,
    run,
)
from ranker.registry import list_versions, verify
from sim.traffic import examination


def test_the_loop_runs_end_to_end(tmp_path: Path) -> None:
    size = SIZES["tiny"]
    result = run(size, tmp_path, seeds=2)

    # build-log joined every event of the served days; the rows sit on their simulated days.
    counts = result["build_log_counts"]
    assert counts["impressions.records"] == size.served_days * size.requests_per_served_day
    assert counts["events.joined: click"] == counts["events.joined: watch"] > 0
    served = pq.read_table(tmp_path / "served", partitioning=None)
    days = sorted(p.name for p in (tmp_path / "served").iterdir())
    assert len(days) == size.served_days
    assert served.num_rows > 0 and served["position"].to_numpy().min() == 0
    assert int(served["click"].to_numpy().sum()) == counts["events.joined: click"]

    # The retrains' window: every offline day (each row examined: position 0) and the served days.
    assert result["size"]["window_days"] == size.world.days + size.served_days
    window = sorted(p.name for p in (tmp_path / "window").iterdir())
    offline = sorted(p.name for p in (tmp_path / "offline").iterdir())
    assert window == sorted(offline + days)
    for day in offline:
        rows = pq.read_table(tmp_path / "window" / day, partitioning=None)
        source = pq.read_table(tmp_path / "offline" / day, partitioning=None)
        assert rows.num_rows == source.num_rows and set(rows["position"].to_pylist()) == {0}
        assert "position" in rows.column_names and set(rows.column_names) < set(served.column_names)

    # Both retrains ran the gate against v1, and both candidates are in the registry.
    retrained = result["retrained"]
    assert {r["decision"] for r in retrained.values()} <= {"publish", "keep"}
    versions = [retrained[arm]["version"] for arm in ARMS]
    registry = tmp_path / "models"
    study = result["seed_study"]
    assert study["versions"]["biased"][0] == retrained["biased"]["version"]
    assert study["versions"]["debiased"][0] == retrained["debiased"]["version"]
    extra = [
        v for variant in VARIANTS for v in study["versions"][variant][1 if variant in ARMS else 0 :]
    ]
    assert sorted(list_versions(registry, "ranker")) == sorted(
        [result["production"], *versions, *extra]
    )
    # The true-curve variant trained with the simulator's examination curve, unchanged.
    curve = json.loads((tmp_path / "seeds" / "debiased_true_curve-1" / "metrics.json").read_text())
    want = examination(np.arange(64), 1.0)
    np.testing.assert_allclose(curve["examination"], want, atol=1e-4)
    for formula in ("watch_time", "default_formula"):
        assert set(study[formula]["mean"]) == set(VARIANTS)
    for version in versions:
        verify(registry / "ranker" / version)
        graph = onnx.load(registry / "ranker" / version / "model.onnx").graph
        assert "position" not in {i.name for i in graph.input}
    learnt = result["examination"]["learnt"]
    assert learnt[0] == 1.0 and all(0 < v <= 1 for v in learnt)
    assert retrained["biased"]["examination"] is None

    # The A/B served both versions, each to its own users, and scored each arm on the truth.
    ab = pq.read_table(tmp_path / "ab-log", partitioning=None)
    labels = set(ab["variant"].to_pylist())
    assert labels == {f"{LAYER}={arm}" for arm in ARMS}
    for arm in ARMS:
        rows = ab.filter(np.array([v == f"{LAYER}={arm}" for v in ab["variant"].to_pylist()]))
        arm_result = result["arms"][arm]
        assert arm_result["requests"] == len(set(rows["request_id"].to_pylist())) > 0
        per_request = float(rows["oracle_watch_time"].to_numpy().sum()) / arm_result["requests"]
        truth = arm_result["truth"]
        assert abs(truth["value"] - per_request) < 1e-3 * max(1.0, per_request)
        assert truth["ci"][0] < truth["value"] < truth["ci"][1]
    diff = result["difference"]
    arms = result["arms"]
    assert (
        abs(diff["value"] - (arms["debiased"]["truth"]["value"] - arms["biased"]["truth"]["value"]))
        < 1e-9
    )
    assert result["cuped_difference"]["se"] > 0
    paired = result["counterfactual"]
    assert set(paired["mean"]) == {"v1", *ARMS} and paired["requests"] == size.ab_requests
    assert json.loads((tmp_path / "result.json").read_text())["production"] == "v0001"
    assert "debiased - biased" in (tmp_path / "report.md").read_text()


def test_the_served_window_is_the_built_days_alone(tmp_path: Path) -> None:
    served = tmp_path / "served"
    for day in ("2026-01-04", "2026-01-05"):
        (served / f"day={day}").mkdir(parents=True)
    assert retrain_window(tmp_path, tmp_path / "offline", served, "served") == (served, 2)
    assert not (tmp_path / "window").exists()


def _arm(rng: np.random.Generator, users: int, effect: float, noise: float) -> UserSums:
    """Per-user sums where each request's truth is its covariate plus `effect` plus noise."""
    requests = rng.integers(1, 6, users).astype(np.float64)
    covariate = requests * rng.lognormal(3.5, 0.6, users)  # users differ a lot
    watch = covariate + effect * requests + noise * np.sqrt(requests) * rng.standard_normal(users)
    return UserSums(watch, covariate, requests)


def test_cuped_removes_the_covariates_variance_not_the_effect() -> None:
    rng = np.random.default_rng(0)
    estimates = []
    for _ in range(200):
        control, treatment = _arm(rng, 400, 0.0, 1.0), _arm(rng, 400, 1.0, 1.0)
        plain = difference(treatment.truth, control.truth)
        adjusted = cuped_difference(treatment, control)
        assert adjusted.se < plain.se / 5
        estimates.append(adjusted)
    values = np.array([e.value for e in estimates])
    assert abs(values.mean() - 1.0) < 0.02  # unbiased
    covered = np.mean([e.ci[0] < 1.0 < e.ci[1] for e in estimates])
    assert 0.9 <= covered <= 0.99  # a 95% interval


def test_cuped_with_an_unrelated_covariate_is_the_plain_difference() -> None:
    rng = np.random.default_rng(1)
    control, treatment = _arm(rng, 2000, 0.0, 20.0), _arm(rng, 2000, 2.0, 20.0)
    shuffled = [
        UserSums(s.watch, rng.permutation(s.covariate), s.requests) for s in (treatment, control)
    ]
    plain = difference(treatment.truth, control.truth)
    adjusted = cuped_difference(*shuffled)
    assert abs(adjusted.value - plain.value) < 0.5 * plain.se
    assert abs(adjusted.se / plain.se - 1) < 0.1
