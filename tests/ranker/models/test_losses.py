import math

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


def _zero_inflated_lognormal(rows: int, seed: int = 0) -> torch.Tensor:
    """Watch-time-like labels: 65% zeros, the rest log-normal (mu 2.5, sigma 1)."""
    gen = torch.Generator().manual_seed(seed)
    positive = torch.rand(rows, generator=gen) < 0.35
    seconds = torch.exp(2.5 + torch.randn(rows, generator=gen))
    return torch.where(positive, seconds, torch.zeros(rows))


def _fit_constant(task: Task, label: torch.Tensor, steps: int = 1500) -> torch.Tensor:
    """The prediction of a constant raw output fitted to `label` by the task's loss."""
    raw = torch.zeros(task.raw_width if task.raw_width > 1 else (), requires_grad=True)
    optimizer = torch.optim.Adam([raw], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        full = raw.expand(len(label), *raw.shape)
        task_loss(task, full, label).backward()
        optimizer.step()
    with torch.no_grad():
        return task_output(task, raw.expand(1, *raw.shape))[0]


def _zero_inflated_beta(rows: int, seed: int = 0) -> torch.Tensor:
    """Like the simulator: 65% zeros, else 30 s times a Beta(0.6, 2.4) completion (many short
    views: log W given W > 0 has a heavy left tail, far from normal)."""
    gen = torch.Generator().manual_seed(seed)
    positive = torch.rand(rows, generator=gen) < 0.35
    beta = torch.distributions.Beta(torch.tensor(0.6), torch.tensor(2.4))
    seconds = 30.0 * beta.sample((rows,)).clamp_min(1e-3)
    return torch.where(positive, seconds, torch.zeros(rows))


def test_raw_widths() -> None:
    assert _task("watch_time", "ziln").raw_width == 3
    assert _task("watch_time", "zi_gamma").raw_width == 2
    assert _task("watch_time").raw_width == _task("click").raw_width == 1


@pytest.mark.parametrize("loss", ["ziln", "zi_gamma"])
def test_zero_inflated_losses_fit_the_mean_of_log_normal_data(loss: str) -> None:
    label = _zero_inflated_lognormal(20_000)
    fitted = _fit_constant(_task("watch_time", loss), label).item()
    assert fitted == pytest.approx(label.mean().item(), rel=0.03)
    # log_mse's expm1(E[log1p W]) is a geometric-mean-like estimate, far below the mean.
    assert _fit_constant(_task("watch_time"), label).item() < 0.3 * label.mean().item()


def test_only_zi_gamma_keeps_the_mean_when_the_positive_part_is_not_log_normal() -> None:
    label = _zero_inflated_beta(20_000)
    mean = label.mean().item()
    assert _fit_constant(_task("watch_time", "zi_gamma"), label).item() == pytest.approx(
        mean, rel=0.03
    )
    # ZILN's exp(mu + sigma^2 / 2) trusts the log-normal shape: the left tail inflates sigma.
    assert _fit_constant(_task("watch_time", "ziln"), label).item() > 1.3 * mean


def test_zi_gamma_loss_is_bce_plus_gamma_deviance() -> None:
    task = _task("watch_time", "zi_gamma")
    label = torch.tensor([0.0, 3.0, 40.0])
    raw = torch.tensor([[0.3, 1.0], [-1.0, 1.2], [2.0, 3.5]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        raw[:, 0], torch.tensor([0.0, 1.0, 1.0])
    )
    ratio = label[1:] / torch.exp(raw[1:, 1])
    want = bce + (ratio - torch.log(ratio) - 1).sum() / 3
    torch.testing.assert_close(task_loss(task, raw, label), want)
    torch.testing.assert_close(
        task_output(task, raw), torch.sigmoid(raw[:, 0]) * torch.exp(raw[:, 1])
    )
    assert torch.isfinite(task_output(task, torch.full((1, 2), 1e4))).all()


def test_ziln_loss_is_bce_plus_lognormal_nll_and_nonnegative() -> None:
    from ranker.models.losses import ZILN_SIGMA_MIN

    task = _task("watch_time", "ziln")
    label = torch.tensor([0.0, 3.0, 40.0, 0.0, 250.0])
    raw = torch.tensor(
        [[0.3, 1.0, -2.0], [-1.0, 1.2, 0.5], [2.0, 3.5, 0.0], [-3.0, 0.0, 4.0], [0.0, 5.0, 1.0]]
    )
    sigma = ZILN_SIGMA_MIN + torch.nn.functional.softplus(raw[:, 2])
    positive = label > 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(raw[:, 0], positive.float())
    dist = torch.distributions.LogNormal(raw[positive, 1], sigma[positive])
    # -log p(W) minus the parameter-free terms log W and log sqrt(2 pi), plus log(1 / sigma_min).
    nll = -dist.log_prob(label[positive]) - torch.log(label[positive])
    nll = nll - 0.5 * math.log(2 * math.pi) - math.log(ZILN_SIGMA_MIN)
    want = bce + nll.sum() / len(label)
    torch.testing.assert_close(task_loss(task, raw, label), want)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        raw = 5 * torch.randn(64, 3, generator=gen)
        assert task_loss(task, raw, _zero_inflated_lognormal(64)).item() >= 0


def test_ziln_output_is_the_distribution_mean_and_finite() -> None:
    from ranker.models.losses import ZILN_SIGMA_MIN

    task = _task("watch_time", "ziln")
    raw = torch.tensor([[0.0, 2.0, 0.0], [1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]])
    out = task_output(task, raw)
    sigma = ZILN_SIGMA_MIN + math.log(2.0)
    assert out[0].item() == pytest.approx(0.5 * math.exp(2.0 + sigma**2 / 2), rel=1e-5)
    assert torch.isfinite(out).all() and (out >= 0).all()


def test_zi_bce_completion_is_click_times_conditional_completion_and_mean_unbiased() -> None:
    task = _task("completion", "zi_bce")
    assert task.raw_width == 2
    label = (_zero_inflated_beta(20_000) / 30.0).clamp(max=1.0)  # completion-like: 65% zeros
    fitted = _fit_constant(task, label).item()
    assert fitted == pytest.approx(label.mean().item(), rel=0.03)
    raw = torch.tensor([[0.3, -1.0], [-1.0, 2.0]])
    y = torch.tensor([0.0, 0.4])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(raw[:, 0], torch.tensor([0.0, 1.0]))
    cond = torch.nn.functional.binary_cross_entropy_with_logits(raw[1, 1], y[1])
    torch.testing.assert_close(task_loss(task, raw, y), bce + cond / 2)
    torch.testing.assert_close(
        task_output(task, raw), torch.sigmoid(raw[:, 0]) * torch.sigmoid(raw[:, 1])
    )
