"""Metrics against brute-force definitions on random data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranker.metrics import auc, calibration, gauc, logloss, mae, ndcg_at_k, ndcg_per_group, rmse


def brute_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in itertools.product(pos, neg)]
    return float(np.mean(pairs)) if pairs else float("nan")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_matches_pair_counting(pairs: list[tuple[int, int]]) -> None:
    labels = np.array([p[0] for p in pairs])
    scores = np.array([p[1] for p in pairs], dtype=np.float64)  # small ints: many ties
    expected = brute_auc(labels, scores)
    if np.isnan(expected):
        assert np.isnan(auc(labels, scores))
    else:
        assert auc(labels, scores) == pytest.approx(expected)


def test_gauc_weights_groups_by_size_and_skips_single_class() -> None:
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 6, 300)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + labels
    labels[groups == 5] = 1  # one class only: skipped
    expected_num, expected_den = 0.0, 0
    for g in range(5):
        mask = groups == g
        expected_num += brute_auc(labels[mask], scores[mask]) * mask.sum()
        expected_den += mask.sum()
    assert gauc(labels, scores, groups) == pytest.approx(expected_num / expected_den)


def brute_ndcg(rel: np.ndarray, scores: np.ndarray, k: int) -> float:
    order = np.argsort(-scores, kind="stable")
    ideal = np.sort(rel)[::-1]
    discounts = 1 / np.log2(np.arange(2, len(rel) + 2))
    dcg = (rel[order][:k] * discounts[:k]).sum()
    idcg = (ideal[:k] * discounts[:k]).sum()
    return dcg / idcg if idcg > 0 else float("nan")


def test_ndcg_matches_definition() -> None:
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(20), rng.integers(3, 25, 20))
    rng.shuffle(groups)
    rel = np.where(rng.random(len(groups)) < 0.3, rng.exponential(30, len(groups)), 0.0)
    scores = rel + rng.normal(0, 20, len(groups))
    per_group = ndcg_per_group(rel, scores, groups, k=10)
    for g in range(20):
        mask = groups == g
        expected = brute_ndcg(rel[mask], scores[mask], 10)
        if np.isnan(expected):
            assert np.isnan(per_group[g])
        else:
            assert per_group[g] == pytest.approx(expected)
    assert ndcg_at_k(rel, rel, groups) == pytest.approx(1.0)


def test_pointwise_metrics() -> None:
    y = np.array([0, 1, 1, 0])
    p = np.array([0.1, 0.9, 0.8, 0.2])
    assert logloss(y, p) == pytest.approx(-np.mean(np.log([0.9, 0.9, 0.8, 0.8])))
    assert calibration(y, p) == pytest.approx(1.0)
    assert rmse([1.0, 2.0], [2.0, 4.0]) == pytest.approx(np.sqrt(2.5))
    assert mae([1.0, 2.0], [2.0, 4.0]) == pytest.approx(1.5)
