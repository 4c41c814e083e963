"""The publish gate with paired bootstrap intervals: the weighted metrics equal the evaluation's,
a noise-only candidate is refused, a clearly better one publishes, guards refuse only with
confidence. Synthetic gate days, small enough for 100 seeded trials in a few seconds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from training.data import EncodedData
from training.evaluate import evaluate_predictions, lookup
from training.retrain.gate import GATE_METRICS, GateConfig, decide
from training.retrain.paired_bootstrap import paired_bootstrap, resample_counts

ALL = [
    "score",
    *(f"{task}.{name}" for task, names in GATE_METRICS.items() for name in names),
]
GATE = GateConfig()  # the shipped defaults: score primary, five guards, 200 resamples


@dataclass(frozen=True)
class Day:
    """A synthetic gate day: true relevance per row, the labels it produced, ids."""

    relevance: np.ndarray
    labels: dict[str, np.ndarray]
    request_id: np.ndarray
    user_id: np.ndarray

    def data(self) -> EncodedData:
        return EncodedData({}, self.labels, self.request_id, self.user_id)


def make_day(seed: int, requests: int = 80, items: int = 10) -> Day:
    rng = np.random.default_rng(seed)
    rows = requests * items
    relevance = rng.normal(0.0, 1.0, rows)
    click = (rng.random(rows) < 1 / (1 + np.exp(-(1.5 * relevance - 1.0)))).astype(np.float32)
    duration = rng.uniform(10, 60, rows)
    watch = np.where(click > 0, duration * rng.beta(2 + np.exp(relevance), 2, rows), 0.0)
    labels = {"click": click, "watch_time": watch, "completion": np.minimum(watch / duration, 1)}
    request_id = np.repeat(np.arange(requests), items)
    return Day(relevance, labels, request_id, request_id % 30)


def model(day: Day, rng: np.random.Generator, noise: float) -> dict[str, np.ndarray]:
    """Predictions from the true relevance seen through `noise` (0: the best this day allows)."""
    seen = day.relevance + rng.normal(0.0, noise, len(day.relevance))
    click = 1 / (1 + np.exp(-(1.5 * seen - 1.0)))
    completion = 1 / (1 + np.exp(-seen))
    return {"click": click, "watch_time": click * 35 * completion, "completion": completion}


def plus_noise(preds: dict[str, np.ndarray], rng: np.random.Generator, scale: float) -> dict:
    n = len(preds["click"])
    logit = np.log(preds["click"] / (1 - preds["click"])) + rng.normal(0, scale, n)
    return {
        "click": 1 / (1 + np.exp(-logit)),
        "watch_time": np.maximum(preds["watch_time"] + rng.normal(0, 5 * scale, n), 0),
        "completion": np.clip(preds["completion"] + rng.normal(0, 0.1 * scale, n), 0, 1),
    }


def gate_on(day: Day, candidate: dict, production: dict, gate: GateConfig = GATE, seed: int = 0):
    data = day.data()
    intervals = paired_bootstrap(
        day.labels,
        candidate,
        production,
        day.request_id,
        day.user_id,
        gate.keys(),
        replicates=gate.bootstrap,
        seed=seed,
    )
    return decide(
        gate,
        evaluate_predictions(candidate, data),
        evaluate_predictions(production, data),
        intervals,
    )


# -- the bootstrap's metrics ----------------------------------------------------------------------
def test_full_data_values_equal_the_evaluation_and_a_replicate_equals_its_materialised_rows() -> (
    None
):
    day = make_day(1, requests=40)
    rng = np.random.default_rng(2)
    cand, prod = model(day, rng, 0.5), model(day, rng, 1.0)
    cand["click"][:30] = 0.4  # tied scores count half
    reps = paired_bootstrap(
        day.labels, cand, prod, day.request_id, day.user_id, ALL, replicates=8, seed=3
    )
    assert set(reps) == set(ALL)
    full_c, full_p = evaluate_predictions(cand, day.data()), evaluate_predictions(prod, day.data())
    for key in ALL:
        assert reps[key].candidate == pytest.approx(lookup(full_c, key), abs=1e-12), key
        assert reps[key].production == pytest.approx(lookup(full_p, key), abs=1e-12), key
    # Replicate 5 by hand: copy each request's rows as often as it was drawn, as a new request.
    counts = resample_counts(40, 8, 3)[5].astype(int)
    rows = [np.flatnonzero(day.request_id == r) for r in range(40) for _ in range(counts[r])]
    index = np.concatenate(rows)
    request = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)])
    copied = EncodedData(
        {}, {t: v[index] for t, v in day.labels.items()}, request, day.user_id[index]
    )
    by_hand = evaluate_predictions({t: v[index] for t, v in cand.items()}, copied)
    for key in ALL:
        assert reps[key].candidate_b[5] == pytest.approx(lookup(by_hand, key), abs=1e-12), key


def test_resamples_draw_whole_requests_with_replacement_and_are_seeded() -> None:
    counts = resample_counts(50, 300, seed=7)
    assert counts.shape == (300, 50) and (counts.sum(1) == 50).all()
    assert (counts == 0).mean() == pytest.approx((1 - 1 / 50) ** 50, abs=0.02)
    assert np.array_equal(counts, resample_counts(50, 300, seed=7))
    assert not np.array_equal(counts, resample_counts(50, 300, seed=8))


# -- decisions -------------------------------------------------------------------------------------
def test_production_plus_noise_is_refused_in_at_least_95_of_100_trials() -> None:
    published = 0
    for trial in range(100):
        day = make_day(trial)
        rng = np.random.default_rng(10_000 + trial)
        production = model(day, rng, 0.8)
        candidate = plus_noise(production, rng, 0.05)
        published += gate_on(day, candidate, production, seed=trial).publish
    assert published <= 5, f"{published} of 100 noise-only candidates published"


def test_a_candidate_only_as_good_as_production_is_refused_in_at_least_95_of_100_trials() -> None:
    """Equal quality, independent errors: the harder case (half of the point estimates favour
    the candidate); the lower bound clears zero in about 2.5% of trials by construction."""
    published = 0
    for trial in range(100):
        day = make_day(trial)
        rng = np.random.default_rng(20_000 + trial)
        production, candidate = model(day, rng, 0.8), model(day, rng, 0.8)
        published += gate_on(day, candidate, production, seed=trial).publish
    assert published <= 5, f"{published} of 100 equal candidates published"


def test_a_clearly_better_candidate_publishes_with_intervals_in_the_reason() -> None:
    day = make_day(0, requests=200)
    rng = np.random.default_rng(1)
    decision = gate_on(day, model(day, rng, 0.2), model(day, rng, 1.5))
    assert decision.publish, decision.reason
    head = decision.checks[0]
    assert head.metric == "score" and head.role == "primary"
    assert head.low is not None and head.high is not None
    assert 0 < head.low <= head.change <= head.high  # type: ignore[operator]
    assert "95% interval" in decision.reason


def test_a_guard_refuses_only_when_confidently_worse_beyond_its_tolerance() -> None:
    day = make_day(0, requests=200)
    rng = np.random.default_rng(1)
    production = model(day, rng, 1.0)
    candidate = model(day, rng, 0.2)
    # Far better on every metric but click calibration broken: logloss confidently worse.
    broken = {**candidate, "click": np.clip(candidate["click"] * 0.3, 1e-3, 1)}
    refused = gate_on(day, broken, production, GateConfig(primary="watch_time.ndcg@10"))
    assert not refused.publish
    (bad,) = [c for c in refused.checks if not c.passed]
    assert bad.metric == "click.logloss" and bad.low is not None and bad.low > bad.limit
    assert "worse by" in refused.reason and "with confidence" in refused.reason
    # A tolerance above the whole interval lets it through.
    loose = GateConfig(primary="watch_time.ndcg@10", tolerances={"click.logloss": 10.0})
    assert gate_on(day, broken, production, loose).publish


def test_a_guard_whose_interval_straddles_its_tolerance_does_not_refuse() -> None:
    day = make_day(3, requests=60)
    rng = np.random.default_rng(4)
    production = model(day, rng, 0.8)
    candidate = plus_noise(production, rng, 0.05)
    gate = GateConfig(primary="score", min_improvement=0.0, tolerance=0.0)
    decision = gate_on(day, candidate, production, gate)
    guards = [c for c in decision.checks if c.role == "guard"]
    straddling = [c for c in guards if c.low is not None and c.low <= 0 <= c.high]  # type: ignore[operator]
    assert straddling and all(c.passed for c in straddling)


def test_without_production_the_candidate_needs_finite_metrics() -> None:
    day = make_day(0)
    preds = model(day, np.random.default_rng(0), 0.5)
    metrics = evaluate_predictions(preds, day.data())
    assert decide(GATE, metrics, None).publish
    metrics["watch_time"]["rmse"] = math.nan
    refused = decide(GATE, metrics, None)
    assert not refused.publish and "watch_time.rmse" in refused.reason


def test_comparing_with_production_needs_intervals() -> None:
    day = make_day(0)
    metrics = evaluate_predictions(model(day, np.random.default_rng(0), 0.5), day.data())
    with pytest.raises(ValueError, match="bootstrap intervals"):
        decide(GATE, metrics, metrics)


def test_gate_metric_names_match_what_evaluation_reports() -> None:
    day = make_day(0, requests=4)
    reported = evaluate_predictions(model(day, np.random.default_rng(0), 0.5), day.data())
    for task, names in GATE_METRICS.items():
        # calibration (mean prediction / mean label) is reported, never gated: 1 is best, not an end.
        assert set(names) | {"calibration"} == set(reported[task])
