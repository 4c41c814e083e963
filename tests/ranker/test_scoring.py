"""The ranking score: properties every formula must hold, and field-named validation errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranker.scoring import (
    DEFAULT_FORMULA,
    ScoreError,
    ScoreFormula,
    rank_order,
    rank_within,
    score,
)

TASKS = ("click", "watch_time", "completion")
weights = st.floats(0.0, 5.0, allow_nan=False)
preds = st.floats(0.0, 1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def formulas(draw: Any) -> ScoreFormula:
    kind = draw(st.sampled_from(["weighted_sum", "weighted_product"]))
    w = {t: draw(weights) for t in TASKS}
    if kind == "weighted_sum":
        transforms = {t: draw(st.sampled_from(["identity", "log1p", "rank"])) for t in TASKS}
        return ScoreFormula(kind, w, transforms=transforms)
    biases = {t: draw(st.floats(1e-3, 10.0)) for t in TASKS}
    return ScoreFormula(kind, w, biases=biases)


@settings(max_examples=150, deadline=None)
@given(
    formula=formulas(),
    values=st.lists(st.tuples(preds, preds, preds), min_size=1, max_size=12),
    item=st.integers(0, 11),
    task=st.sampled_from(TASKS),
    bump=st.floats(1e-3, 1e3),
)
def test_monotone_in_each_prediction(
    formula: ScoreFormula, values: list[tuple[float, ...]], item: int, task: str, bump: float
) -> None:
    """Raising one item's prediction of one task never lowers its score (non-negative weights),
    nor lets an item it was ahead of overtake it."""
    item %= len(values)
    base = {t: np.array([v[i] for v in values], dtype=np.float64) for i, t in enumerate(TASKS)}
    raised = {t: a.copy() for t, a in base.items()}
    raised[task][item] += bump
    before, after = score(formula, base), score(formula, raised)
    assert after[item] >= before[item] - 1e-9 * max(1.0, abs(before[item]))
    # items behind it stay behind it
    behind = before < before[item] - 1e-9 * max(1.0, abs(before[item]))
    assert np.all(after[behind] <= after[item] + 1e-9 * max(1.0, abs(after[item])))


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.tuples(preds, preds, preds), min_size=2, max_size=20, unique=True),
    w=st.tuples(weights, weights, weights),
    task=st.sampled_from(TASKS),
    factor=st.floats(1e-2, 1e2),
)
def test_product_ranking_is_invariant_to_rescaling_a_task(
    values: list[tuple[float, ...]], w: tuple[float, ...], task: str, factor: float
) -> None:
    """(c p + c b)^w = c^w (p + b)^w: rescaling a task (and its bias) rescales every score by the
    same factor, so the ranking does not change."""
    biases = dict.fromkeys(TASKS, 0.5)
    formula = ScoreFormula("weighted_product", dict(zip(TASKS, w, strict=True)), biases=biases)
    rescaled = ScoreFormula(
        "weighted_product", formula.weights, biases={**biases, task: 0.5 * factor}
    )
    base = {t: np.array([v[i] for v in values]) for i, t in enumerate(TASKS)}
    scaled = {**base, task: base[task] * factor}
    s1, s2 = score(formula, base), score(rescaled, scaled)
    np.testing.assert_allclose(s2, s1 * factor ** formula.weights[task], rtol=1e-9)
    assert np.array_equal(
        np.argsort(-np.round(s1 / s1.max(), 9), kind="stable"),
        np.argsort(-np.round(s2 / s2.max(), 9), kind="stable"),
    )


def test_weighted_sum_and_transforms_by_hand() -> None:
    predictions = {
        "click": np.array([0.1, 0.5]),
        "watch_time": np.array([np.e - 1, 0.0]),
        "completion": np.array([1.0, 0.0]),
    }
    got = score(DEFAULT_FORMULA, predictions)  # 1*click + 0.2*log1p(watch) + 0.5*completion
    np.testing.assert_allclose(got, [0.1 + 0.2 + 0.5, 0.5])
    product = ScoreFormula(
        "weighted_product",
        {"click": 1.0, "completion": 2.0},
        biases={"click": 1.0, "completion": 1.0},
    )
    np.testing.assert_allclose(score(product, predictions), [1.1 * 4.0, 1.5 * 1.0])
    ranked = ScoreFormula(weights={"click": 1.0}, transforms={"click": "rank"})
    np.testing.assert_allclose(score(ranked, {"click": np.array([0.3, 0.1, 0.9])}), [0.5, 0.0, 1.0])


def test_rank_within_groups_and_ties() -> None:
    values = np.array([1.0, 1.0, 3.0, 5.0, 2.0])
    groups = np.array([0, 0, 0, 1, 1])
    np.testing.assert_allclose(rank_within(values, groups), [0.25, 0.25, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(rank_within(np.array([4.0]), None), [0.0])


def test_rank_order_is_stable_on_ties() -> None:
    assert rank_order(np.array([0.5, 0.9, 0.5, 0.9])).tolist() == [1, 3, 0, 2]


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"formula": "max"}, "formula"),
        ({"weights": {}}, "weights"),
        ({"weights": {"click": "1"}}, "weights.click"),
        ({"weights": {"click": True}}, "weights.click"),
        ({"weights": {"click": float("nan")}}, "weights.click"),
        ({"weights": {"click": -1.0}}, "weights.click"),
        ({"weights": {"click": 1.0}, "transforms": {"click": "sqrt"}}, "transforms.click"),
        ({"formula": "weighted_product", "weights": {"click": 1.0}, "biases": {"click": 0}}, "biases.click"),
        ({"weights": {"click": 1.0}, "biases": {"click": 1.0}}, "biases"),
        ({"formula": "weighted_product", "weights": {"click": 1.0}, "transforms": {"click": "log1p"}}, "transforms"),
        ({"weights": [1.0]}, "weights"),
        ({"weights": {"click": 1.0}, "extra": 1}, "extra"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(ScoreError) as info:
        ScoreFormula.from_dict(doc)
    assert str(info.value).startswith(f"{field}:"), str(info.value)


def test_negative_weights_need_consent_and_unknown_tasks_are_named() -> None:
    formula = ScoreFormula(weights={"click": 1.0, "completion": -0.5}, allow_negative=True)
    assert ScoreFormula.from_dict(formula.to_dict()) == formula
    with pytest.raises(ScoreError, match=r"^weights.likes: the model has no task"):
        ScoreFormula(weights={"likes": 1.0}).check_tasks(TASKS)
    with pytest.raises(ScoreError, match=r"^weights: no predictions for tasks \['likes'\]"):
        score(ScoreFormula(weights={"likes": 1.0}), {"click": np.zeros(2)})
