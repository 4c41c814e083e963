"""Position tower: identity at the top, P(seen) x output below it, recovers a known examination
curve, lives in the training wrapper only."""

from __future__ import annotations

import pytest
import torch

from ranker.models import MultiTaskTrainingModel, build_model
from ranker.models.losses import task_loss, task_output
from ranker.models.position import POSITION_INPUT, AtServedPosition, PositionBias
from ranker.tasks import LOSS_WIDTHS, TASK_LOSSES, Task, build_tasks

# Every loss every task can have: a new loss without a rule fails here.
LOSSES = [(name, loss) for name, losses in TASK_LOSSES.items() for loss in losses]


def _task(name: str, loss: str) -> Task:
    return build_tasks([name], {name: loss})[0]


def _tower(max_positions: int = 8) -> PositionBias:
    tower = PositionBias(max_positions)
    with torch.no_grad():
        tower.not_seen_logit.copy_(torch.linspace(-3.0, 2.0, max_positions))
    return tower


def _raw(loss: str, n: int) -> torch.Tensor:
    width = LOSS_WIDTHS.get(loss, 1)
    shape = (n,) if width == 1 else (n, width)
    return 3 * torch.randn(shape)


@pytest.mark.parametrize(("name", "loss"), LOSSES)
def test_top_position_is_the_model(name: str, loss: str) -> None:
    tower, task = _tower(), _task(name, loss)
    raw = _raw(loss, 50)
    assert torch.equal(tower.observed_raw(task, raw, torch.zeros(50, dtype=torch.long)), raw)
    assert tower.examination()[0] == 1.0


@pytest.mark.parametrize(("name", "loss"), LOSSES)
def test_lower_positions_scale_the_expectation_by_p_seen(name: str, loss: str) -> None:
    tower, task = _tower(), _task(name, loss)
    raw = _raw(loss, 64)
    position = torch.arange(64) % 10  # 8 and 9 share the last estimate
    seen = tower.examination()[position.clamp(max=7)]
    observed = tower.observed_raw(task, raw, position)
    assert observed.shape == raw.shape
    if loss == "log_mse":  # the raw output is E[log1p W]: 0 when unseen, so it scales
        torch.testing.assert_close(observed, seen * raw)
    else:
        torch.testing.assert_close(
            task_output(task, observed), seen * task_output(task, raw), rtol=1e-4, atol=1e-6
        )
    assert ((seen > 0) & (seen <= 1)).all()


def test_gradients_stay_finite_at_extreme_logits() -> None:
    tower, task = _tower(), _task("click", "bce")
    logit = torch.tensor([-40.0, 40.0, 0.0, -40.0, 40.0], requires_grad=True)
    position = torch.tensor([0, 0, 3, 7, 7])
    loss = task_loss(
        task, tower.observed_raw(task, logit, position), torch.tensor([1.0, 0, 1, 1, 0])
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logit.grad).all() and torch.isfinite(tower.not_seen_logit.grad).all()
    assert tower.not_seen_logit.grad[0] == 0  # position 0 is examined by definition


def test_recovers_a_known_examination_curve() -> None:
    """Clicks drawn as θ_p · P(click | item) with items shown at random positions: fitting the
    product (item logits + the tower) recovers θ_p = 1 / log2(p + 2), as PAL claims."""
    gen = torch.Generator().manual_seed(0)
    items, positions, rows = 40, 10, 60_000
    true_logit = torch.randn(items, generator=gen)
    theta = 1.0 / torch.log2(torch.arange(positions) + 2.0)
    item = torch.randint(0, items, (rows,), generator=gen)
    position = torch.randint(0, positions, (rows,), generator=gen)
    click = torch.rand(rows, generator=gen) < theta[position] * torch.sigmoid(true_logit[item])
    tower, logits = PositionBias(positions), torch.nn.Parameter(torch.zeros(items))
    optimizer = torch.optim.Adam([logits, *tower.parameters()], lr=0.1)
    task = _task("click", "bce")
    for _ in range(300):
        optimizer.zero_grad()
        task_loss(task, tower.observed_raw(task, logits[item], position), click.float()).backward()
        optimizer.step()
    assert (tower.examination() - theta).abs().max() < 0.05


def test_bad_positions_are_refused() -> None:
    tower = PositionBias(4)
    with pytest.raises(ValueError, match="position must be >= 0"):
        tower.log_seen(torch.tensor([0, -1]))
    with pytest.raises(TypeError, match="integer tensor"):
        tower.log_seen(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="max_positions"):
        PositionBias(1)


def test_the_tower_trains_in_the_wrapper_only(spec, make_inputs) -> None:
    model = build_model("mmoe", spec, config={"embedding_dim": 4, "expert_units": [8]})
    keys = set(model.state_dict())
    x = make_inputs(spec, 12, 12)
    labels = {
        "click": torch.ones(12),
        "watch_time": torch.full((12,), 20.0),
        "completion": torch.full((12,), 0.5),
    }
    position = torch.arange(12)
    plain = MultiTaskTrainingModel(model)
    debiased = MultiTaskTrainingModel(model, position=_tower())
    with pytest.raises(ValueError, match="pass each row's position"):
        debiased(x, labels)
    top = debiased(x, labels, torch.zeros(12, dtype=torch.long))
    torch.testing.assert_close(top.losses, plain(x, labels).losses)  # at the top: the model
    below = debiased(x, labels, position)
    assert not torch.allclose(below.losses, top.losses)
    below.losses.sum().backward()
    assert debiased.position is not None and debiased.position.not_seen_logit.grad is not None
    assert set(model.state_dict()) == keys  # the inference model holds no position part
    groups = {g["name"]: g for g in debiased.param_groups(1e-3, position_lr=0.05)}
    assert groups["position"]["params"] == [debiased.position.not_seen_logit]
    assert groups["position"]["lr"] == 0.05
    others = [p for name, g in groups.items() if name != "position" for p in g["params"]]
    assert not any(p is debiased.position.not_seen_logit for p in others)


def test_at_served_position_is_the_model_times_p_seen(spec, make_inputs) -> None:
    model = build_model("mmoe", spec, config={"embedding_dim": 4, "expert_units": [8]}).eval()
    tower = _tower()
    x = make_inputs(spec, 12, 12)
    position = torch.arange(12)
    served = AtServedPosition(model, tower)
    assert served.task_names == model.task_names
    with torch.no_grad():
        top = served({**x, POSITION_INPUT: torch.zeros(12, dtype=torch.long)})
        below = served({**x, POSITION_INPUT: position})
        alone = model(x)
    seen = tower.examination()[position.clamp(max=7)]
    for task in model.task_names:
        torch.testing.assert_close(top[task], alone[task])
        if task != "watch_time":  # log_mse: the scaled raw is log1p seconds, not seconds
            torch.testing.assert_close(below[task], seen * alone[task])
