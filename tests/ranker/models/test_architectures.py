import pytest
import torch

from ranker.models import build_model
from ranker.schema import DenseStats, FeatureSpec, load_default_spec

SMALL = {
    "shared_bottom": {"embedding_dim": 8, "bottom_units": [32, 16], "tower_units": [8]},
    "mmoe": {"embedding_dim": 8, "num_experts": 4, "expert_units": [32, 16], "tower_units": [8]},
    "ple": {
        "embedding_dim": 8,
        "num_levels": 2,
        "num_shared_experts": 2,
        "num_task_experts": 1,
        "expert_units": [32, 16],
        "tower_units": [8],
    },
}
KINDS = sorted(SMALL)


def _model(kind: str, spec: FeatureSpec, **extra):
    return build_model(kind, spec, config={**SMALL[kind], **extra}).eval()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("user_rows", [1, 9])
def test_output_shapes_and_ranges(kind: str, user_rows: int, spec, make_inputs) -> None:
    model = _model(kind, spec, feeds={"completion": "click"})
    out = model(make_inputs(spec, user_rows, 9))
    assert list(out) == ["click", "watch_time", "completion"]
    assert all(v.shape == (9,) and torch.isfinite(v).all() for v in out.values())
    assert ((out["click"] >= 0) & (out["click"] <= 1)).all()
    assert ((out["completion"] >= 0) & (out["completion"] <= 1)).all()
    assert (out["watch_time"] >= 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_default_spec_and_default_config(kind: str, make_inputs) -> None:
    base = load_default_spec()
    spec = base.with_stats({f.name: DenseStats(1.0, 1.0) for f in base.select("item", "dense")})
    model = build_model(kind, spec).eval()
    out = model(make_inputs(spec, 1, 6))
    assert [v.shape for v in out.values()] == [(6,)] * 3


@pytest.mark.parametrize("kind", KINDS)
def test_user_broadcast_equals_repeated_rows(kind: str, spec, make_inputs) -> None:
    model = _model(kind, spec, feeds={"completion": "click"})
    x = make_inputs(spec, 1, 11)
    repeated = {k: v.expand(11, -1) if k.startswith("user") else v for k, v in x.items()}
    one, many = model(x), model(repeated)
    for task in one:
        torch.testing.assert_close(one[task], many[task], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_are_independent(kind: str, spec, make_inputs) -> None:
    model = _model(kind, spec)
    x = make_inputs(spec, 1, 8)
    full = model(x)
    head = model({k: v if k.startswith("user") else v[:3] for k, v in x.items()})
    for task in full:
        torch.testing.assert_close(full[task][:3], head[task], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_shared_representation_is_differentiable(kind: str, spec, make_inputs) -> None:
    model = _model(kind, spec)
    parts = model.forward_parts(make_inputs(spec, 1, 6))
    assert parts.shared
    for task in model.task_names:
        grads = torch.autograd.grad(parts.raw[task].sum(), parts.shared, retain_graph=True)
        assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_shared_parameters_exclude_embeddings_and_towers(kind: str, spec) -> None:
    model = _model(kind, spec)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared
    assert not shared & {id(p) for p in model.inputs.parameters()}
    assert not shared & {id(p) for p in model.towers.parameters()}


@pytest.mark.parametrize("kind", ["mmoe", "ple"])
def test_gates_are_distributions(kind: str, spec, make_inputs) -> None:
    model = _model(kind, spec)
    gates = model.forward_parts(make_inputs(spec, 1, 5)).gates
    expected = (
        {"click", "watch_time", "completion"}
        if kind == "mmoe"
        else {f"level{i}/{t}" for i in (0, 1) for t in ("click", "watch_time", "completion")}
        | {"level0/shared"}
    )
    assert set(gates) == expected
    for w in gates.values():
        torch.testing.assert_close(w.sum(-1), torch.ones(5))


@pytest.mark.parametrize("kind", ["mmoe", "ple"])
def test_expert_dropout_only_in_training(kind: str, spec, make_inputs) -> None:
    model = _model(kind, spec, expert_dropout=0.5)
    x = make_inputs(spec, 1, 64)
    torch.testing.assert_close(model(x), model(x))  # eval: deterministic, no experts hidden
    model.train()
    gates = model.forward_parts(x).gates
    w = gates["click"] if kind == "mmoe" else gates["level0/click"]
    hidden = (w == 0).float().mean()
    assert 0.2 < hidden < 0.6  # about half the experts hidden per row ...
    assert (w.sum(-1) - 1).abs().max() < 1e-5  # ... never all of them


def test_ple_single_level(spec, make_inputs) -> None:
    model = _model("ple", spec, num_levels=1)
    parts = model.forward_parts(make_inputs(spec, 1, 4))
    assert set(parts.gates) == {"level0/click", "level0/watch_time", "level0/completion"}
    assert parts.shared[0].shape == (2, 4, 16)  # [shared experts, N, H]
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in model.levels[0].shared_experts.parameters()}
