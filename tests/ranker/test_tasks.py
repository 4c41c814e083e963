import subprocess
import sys

import numpy as np
import pytest

from ranker.tasks import (
    DEFAULT_TASKS,
    TASK_ORDER,
    TaskError,
    build_tasks,
    labels_from_columns,
    tasks_from_dicts,
    tasks_to_dicts,
)


def test_default_tasks_order_kinds_and_losses() -> None:
    assert (
        [t.name for t in DEFAULT_TASKS] == list(TASK_ORDER) == ["click", "watch_time", "completion"]
    )
    assert [t.is_regression for t in DEFAULT_TASKS] == [False, True, True]
    assert [t.loss for t in DEFAULT_TASKS] == ["bce", "log_mse", "bce"]


def test_build_tasks_subset_and_loss_option() -> None:
    tasks = build_tasks(["click", "watch_time"], {"watch_time": "mse"})
    assert [(t.name, t.loss) for t in tasks] == [("click", "bce"), ("watch_time", "mse")]


@pytest.mark.parametrize(
    ("names", "losses", "message"),
    [
        (["click", "dwell"], None, "unknown tasks ['dwell']"),
        (["completion", "click"], None, "output order"),
        (["click", "click"], None, "twice"),
        ([], None, "at least one"),
        (None, {"watch_time": "huber"}, "valid: ['log_mse', 'mse', 'ziln', 'zi_gamma']"),
        (["click"], {"watch_time": "mse"}, "not in the task list"),
    ],
)
def test_build_tasks_rejects(names: list[str] | None, losses: dict | None, message: str) -> None:
    with pytest.raises(TaskError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_tasks(names, losses)


def test_tasks_dict_round_trip() -> None:
    tasks = build_tasks(losses={"watch_time": "mse"})
    assert tasks_from_dicts(tasks_to_dicts(tasks)) == tasks
    with pytest.raises(TaskError, match="kind"):
        tasks_from_dicts([{"name": "click", "kind": "regression", "loss": "bce"}])


def test_labels_from_columns_values_and_clipping() -> None:
    labels = labels_from_columns(
        click=np.array([0, 1, 1, 1]),
        watch_time=np.array([0.0, 10.0, 45.0, 30.0]),
        duration=np.array([20.0, 40.0, 30.0, 30.0]),
    )
    assert list(labels) == list(TASK_ORDER)
    assert all(v.dtype == np.float32 for v in labels.values())
    np.testing.assert_array_equal(labels["click"], [0, 1, 1, 1])
    np.testing.assert_array_equal(labels["watch_time"], [0, 10, 45, 30])  # seconds, not rescaled
    np.testing.assert_allclose(labels["completion"], [0.0, 0.25, 1.0, 1.0])  # 45/30 clipped to 1


@pytest.mark.parametrize("bad", [0.0, -5.0, np.nan, np.inf])
def test_labels_reject_bad_duration(bad: float) -> None:
    with pytest.raises(
        TaskError, match=r"duration must be finite and > 0: 1 bad rows, first at row 2"
    ):
        labels_from_columns(np.ones(3), np.ones(3), np.array([10.0, 10.0, bad]))


@pytest.mark.parametrize(
    ("click", "watch_time", "name"),
    [([0, 2, 1], [1.0, 1.0, 1.0], "click"), ([0, 1, 1], [1.0, -1.0, 1.0], "watch_time")],
)
def test_labels_reject_bad_columns(click: list, watch_time: list, name: str) -> None:
    with pytest.raises(TaskError, match=f"^{name} must be"):
        labels_from_columns(np.array(click), np.array(watch_time), np.full(3, 10.0))


def test_labels_reject_shape_mismatch() -> None:
    with pytest.raises(TaskError, match="same shape"):
        labels_from_columns(np.ones(3), np.ones(2), np.ones(3))


def test_tasks_module_is_torch_free() -> None:
    code = "import sys; sys.modules['torch'] = None; import ranker.tasks; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
