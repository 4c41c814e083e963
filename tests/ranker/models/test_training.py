import pytest
import torch

from ranker.models import AUX_FORMS, AuxConfig, MultiTaskTrainingModel, build_model
from ranker.tasks import build_tasks

CONFIG = {
    "embedding_dim": 8,
    "num_experts": 3,
    "expert_units": [16, 8],
    "tower_units": [16],  # larger than a bottleneck head of 8 units on 8 inputs
    "feeds": {"completion": "click"},
}


def _labels(n: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    click = (torch.rand(n, generator=gen) < 0.4).float()
    watch = click * 100 * torch.rand(n, generator=gen)
    return {"click": click, "watch_time": watch, "completion": (watch / 60).clamp(max=1)}


@pytest.mark.parametrize("form", AUX_FORMS)
def test_aux_heads_change_loss_not_inference(form: str, spec, make_inputs) -> None:
    model = build_model("mmoe", spec, config=CONFIG).eval()
    x, y = make_inputs(spec, 12, 12), _labels(12)
    before = model(x)
    keys = set(model.state_dict())

    plain = MultiTaskTrainingModel(model).eval()
    with_aux = MultiTaskTrainingModel(model, AuxConfig(form=form, gamma=0.5, pool_size=3)).eval()
    step, aux_step = plain(x, y), with_aux(x, y)

    assert step.aux_losses is None and aux_step.aux_losses is not None
    assert aux_step.losses.shape == (3,)
    torch.testing.assert_close(aux_step.main_losses, step.losses)
    torch.testing.assert_close(aux_step.losses, step.losses + 0.5 * aux_step.aux_losses)
    assert (aux_step.aux_losses > 0).all()
    assert set(model.state_dict()) == keys and not any("aux" in k for k in keys)
    assert any(k.startswith("aux_heads.") for k in with_aux.state_dict())
    after = model(x)
    for task in before:
        assert torch.equal(before[task], after[task])


def test_aux_heads_for_some_tasks(spec, make_inputs) -> None:
    model = build_model("ple", spec, config={"embedding_dim": 4, "expert_units": [8]})
    wrapper = MultiTaskTrainingModel(model, AuxConfig(tasks=("watch_time",)))
    assert list(wrapper.aux_heads) == ["watch_time"]
    step = wrapper(make_inputs(spec, 5, 5), _labels(5))
    assert step.aux_losses[0] == 0 and step.aux_losses[2] == 0 and step.aux_losses[1] > 0
    with pytest.raises(ValueError, match="unknown tasks"):
        MultiTaskTrainingModel(model, AuxConfig(tasks=("dwell",)))


@pytest.mark.parametrize("kind", ["shared_bottom", "mmoe", "ple"])
def test_stop_gradient_feed(kind: str, spec, make_inputs) -> None:
    config = {"embedding_dim": 4, "tower_units": [8], "feeds": {"completion": "click"}}
    model = build_model(kind, spec, config=config)
    wrapper = MultiTaskTrainingModel(model, AuxConfig())
    step = wrapper(make_inputs(spec, 1, 16), _labels(16))
    assert wrapper.aux_heads["completion"].head.in_features == model.towers.in_dim("click") + 1
    step.losses[2].backward()  # completion only
    click_tower = model.towers.towers["click"].parameters()
    completion_tower = model.towers.towers["completion"].parameters()
    assert all(p.grad is None or not p.grad.any() for p in click_tower)
    assert all(p.grad is not None for p in completion_tower)
    assert any(p.grad.any() for p in model.towers.towers["completion"].parameters())


def test_feed_reaches_target_tower(spec, make_inputs) -> None:
    model = build_model("mmoe", spec, config=CONFIG).eval()
    parts = model.forward_parts(make_inputs(spec, 1, 4))
    assert torch.equal(parts.tower_inputs["completion"][:, -1], parts.raw["click"])
    assert parts.tower_inputs["click"].shape[1] + 1 == parts.tower_inputs["completion"].shape[1]


def test_training_step_exposes_balancer_inputs(spec, make_inputs) -> None:
    wrapper = MultiTaskTrainingModel(build_model("mmoe", spec, config=CONFIG), AuxConfig())
    step = wrapper(make_inputs(spec, 10, 10), _labels(10))
    (experts,) = step.shared
    assert experts.shape == (3, 10, 8)  # [E, N, H]
    shared = wrapper.shared_parameters()
    grads = [torch.autograd.grad(step.losses[k], shared, retain_graph=True) for k in range(3)]
    assert all(any(g.abs().sum() > 0 for g in task_grads) for task_grads in grads)
    rep = [torch.autograd.grad(step.losses[k], experts, retain_graph=True)[0] for k in range(3)]
    assert all(r.shape == experts.shape for r in rep)
    assert set(wrapper.gate_usage) == {"click", "watch_time", "completion"}
    torch.testing.assert_close(wrapper.gate_usage["click"].sum(), torch.tensor(1.0))


def test_missing_label_named(spec, make_inputs) -> None:
    wrapper = MultiTaskTrainingModel(build_model("mmoe", spec, config=CONFIG))
    labels = _labels(3)
    del labels["watch_time"]
    with pytest.raises(KeyError, match="watch_time"):
        wrapper(make_inputs(spec, 3, 3), labels)


def test_a_few_steps_reduce_the_loss(spec, make_inputs) -> None:
    wrapper = MultiTaskTrainingModel(
        build_model("ple", spec, config={"embedding_dim": 4}), AuxConfig()
    )
    x, y = make_inputs(spec, 64, 64), _labels(64)
    opt = torch.optim.Adam(wrapper.param_groups(lr=1e-2))
    first = wrapper(x, y).losses.sum().item()
    for _ in range(30):
        opt.zero_grad()
        wrapper(x, y).losses.sum().backward()
        opt.step()
    assert wrapper(x, y).losses.sum().item() < 0.5 * first


@pytest.mark.parametrize("form", AUX_FORMS)
def test_ziln_task_tower_aux_head_and_feed_have_its_width(form: str, spec, make_inputs) -> None:
    tasks = build_tasks(losses={"watch_time": "ziln"})
    config = {**CONFIG, "feeds": {"completion": "watch_time"}}
    model = build_model("mmoe", spec, tasks, config)
    wrapper = MultiTaskTrainingModel(model, AuxConfig(form=form, pool_size=3))
    step = wrapper(make_inputs(spec, 1, 10), _labels(10))
    assert step.raw["watch_time"].shape == (10, 3)
    assert step.raw["click"].shape == step.raw["completion"].shape == (10,)
    # completion's tower reads watch_time's three raw outputs, detached.
    parts = model.forward_parts(make_inputs(spec, 1, 10))
    torch.testing.assert_close(parts.tower_inputs["completion"][:, -3:], parts.raw["watch_time"])
    assert torch.isfinite(step.losses).all() and (step.aux_losses >= 0).all()
    model.eval()
    assert model(make_inputs(spec, 1, 10))["watch_time"].shape == (10,)


def test_embedding_l2_penalises_the_rows_a_batch_reads(spec, make_inputs) -> None:
    from ranker.models.interactions import field_embeddings

    model = build_model("mmoe", spec, config=CONFIG)
    x, y = make_inputs(spec, 6, 6), _labels(6)
    assert MultiTaskTrainingModel(model)(x, y).penalty is None
    with pytest.raises(ValueError, match="embedding_l2 must be >= 0"):
        MultiTaskTrainingModel(model, embedding_l2=-1.0)
    step = MultiTaskTrainingModel(model, embedding_l2=0.5)(x, y)
    user, item = model.inputs(x)
    want = sum(
        field_embeddings(v, fields, 8).pow(2).sum(dim=(1, 2)).mean()
        for v, fields in ((user, 4), (item, 3))
    )
    torch.testing.assert_close(step.penalty, 0.5 * want)
    # Its gradient reaches only the table rows the batch read.
    table = model.inputs.item.table.weight
    (grad,) = torch.autograd.grad(step.penalty, table)
    read = x["item_cat"][:, 0] + model.inputs.item.cat_offsets[0]
    touched = grad.abs().sum(dim=1) > 0
    assert touched[read].all() and touched.sum() <= len(read) + x["item_multi"].numel()
