import pytest
import torch

from ranker.models.losses import LOSSES, MAX_LOG_SECONDS, task_loss, task_output
from ranker.tasks import TASK_LOSSES, Task, build_tasks


def test_every_declared_loss_is_implemented() -> None:
    assert {loss for losses in TASK_LOSSES.values() for loss in losses} == set(LOSSES)


def _task(name: str, loss: str | None = None) -> Task:
    return build_tasks([name], {name: loss} if loss else None)[0]


def test_log_mse_compares_log1p_seconds() -> None:
    task = _task("watch_time")
    label = torch.tensor([0.0, 9.0, 99.0])
    raw = torch.log1p(label)
    assert task_loss(task, raw, label) == 0
    torch.testing.assert_close(task_output(task, raw), label)
    assert task_loss(task, raw + 1, label).item() == pytest.approx(1.0)


def test_mse_in_raw_seconds_not_rescaled() -> None:
    task = _task("watch_time", "mse")
    assert task_loss(task, torch.zeros(2), torch.tensor([10.0, 30.0])).item() == pytest.approx(
        500.0
    )


def test_outputs_in_natural_ranges() -> None:
    raw = torch.tensor([-1e4, -3.0, 0.0, 3.0, 1e4])
    for task in (*build_tasks(), _task("watch_time", "mse")):
        out = task_output(task, raw)
        assert torch.isfinite(out).all() and (out >= 0).all()
        if not task.is_regression or task.kind == "bounded":
            assert (out <= 1).all()
    assert task_output(_task("watch_time"), torch.tensor([1e4])) == torch.expm1(
        torch.tensor(MAX_LOG_SECONDS)
    )


def test_completion_soft_labels() -> None:
    task = _task("completion")
    label = torch.tensor([0.25, 0.75])
    best = task_loss(task, torch.logit(label), label)
    assert best < task_loss(task, torch.logit(label) + 0.1, label)
