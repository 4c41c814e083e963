"""Per-task factor terms: what they compute, how they broadcast, and how models add them."""

import pytest
import torch

from ranker.models import build_model
from ranker.models.factors import TaskFactors
from ranker.models.inputs import embedding_tables
from ranker.models.training import MultiTaskTrainingModel
from ranker.registry import REQUEST_INDEX
from ranker.schema import FeatureSpec
from ranker.tasks import build_tasks

MMOE = {"embedding_dim": 8, "num_experts": 3, "expert_units": [16, 8], "tower_units": [8]}


def _side_by_lookup(group, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over a group's embedded fields of each field's vector, read straight from the table."""
    table = group.table.weight
    g = group.group
    total = sum(table[x[f"{g}_cat"][:, j] + group.cat_offsets[j]] for j in range(group.n_cat))
    ids = x[f"{g}_multi"]
    for j in range(group.n_multi):
        cols = (group.pool[:, j] > 0).nonzero().flatten()
        rows = table[ids[:, cols] + group.multi_offsets[cols]]  # [B, L, D]
        mask = (ids[:, cols] > 0).float().unsqueeze(-1)
        total = total + (rows * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return total


def test_each_form_is_its_own_dot_product(spec: FeatureSpec, make_inputs) -> None:
    factors = TaskFactors(spec, ("click", "watch_time"), {"watch_time": 2}, rank=3)
    assert factors.forms == 3 and factors.user.embedding_dim == 9
    x = make_inputs(spec, 1, 6)
    out = factors(x)
    assert out["click"].shape == (6,) and out["watch_time"].shape == (6, 2)
    u, i = _side_by_lookup(factors.user, x), _side_by_lookup(factors.item, x)  # [1, 9], [6, 9]
    want = (u * i).unflatten(-1, (3, 3)).sum(-1)  # forms x rank columns
    torch.testing.assert_close(out["click"], want[:, 0])
    torch.testing.assert_close(out["watch_time"], want[:, 1:])


def test_one_user_row_broadcasts_and_batches_gather(spec: FeatureSpec, make_inputs) -> None:
    factors = TaskFactors(spec, ("click",), {}, rank=4)
    x = make_inputs(spec, 1, 5)
    repeated = {k: v.expand(5, -1) if k.startswith("user") else v for k, v in x.items()}
    one, many = factors(x)["click"], factors(repeated)["click"]
    torch.testing.assert_close(one, many, rtol=0, atol=1e-7)
    # A batch of two requests: each candidate reads its own request's user row.
    two = make_inputs(spec, 2, 5, seed=3)
    rows = torch.tensor([0, 1, 1, 0, 1])
    batched = factors(two, rows)["click"]
    for r in (0, 1):
        single = {k: v[r : r + 1] if k.startswith("user") else v for k, v in two.items()}
        picked = rows == r
        torch.testing.assert_close(batched[picked], factors(single)["click"][picked])


def test_factor_rank_zero_is_off_and_negative_is_refused(spec: FeatureSpec) -> None:
    plain = build_model("mmoe", spec, config=MMOE)
    assert plain.factors is None
    assert plain.hparams()["config"]["factor_rank"] == 0
    with pytest.raises(ValueError, match="factor_rank must be an integer >= 0"):
        build_model("mmoe", spec, config={**MMOE, "factor_rank": -1})


@pytest.mark.parametrize("kind", ["mmoe", "ple", "shared_bottom"])
def test_models_add_the_terms_to_the_raw_outputs(kind: str, spec: FeatureSpec, make_inputs) -> None:
    config = {"embedding_dim": 8, "tower_units": [8], "factor_rank": 2,
              "feeds": {"completion": "click"}}  # fmt: skip
    tasks = build_tasks(losses={"watch_time": "zi_gamma", "completion": "zi_bce"})
    model = build_model(kind, spec, tasks, config).eval()
    # Their own tables: 5 forms (click 1, zi_gamma 2, zi_bce 2) x rank 2 per row.
    assert model.factors is not None and model.factors.forms == 5
    assert all(t.embedding_dim in (8, 10) for t in embedding_tables(model))
    x = make_inputs(spec, 1, 7)
    parts = model.forward_parts(x)
    terms = model.factors(x)
    with torch.no_grad():
        for group in (model.factors.user, model.factors.item):
            group.table.weight.zero_()
    bare = model.forward_parts(x)
    torch.testing.assert_close(parts.raw["click"], bare.raw["click"] + terms["click"])
    torch.testing.assert_close(
        parts.raw["watch_time"], bare.raw["watch_time"] + terms["watch_time"]
    )
    # The feed reads the click output with its term: completion's tower input differs.
    assert not torch.equal(parts.tower_inputs["completion"], bare.tower_inputs["completion"])


def test_factor_tasks_limit_the_terms_to_the_named_tasks(spec: FeatureSpec, make_inputs) -> None:
    tasks = build_tasks(losses={"watch_time": "zi_gamma"})
    config = {**MMOE, "factor_rank": 2, "factor_tasks": ["watch_time", "completion"]}
    model = build_model("mmoe", spec, tasks, config).eval()
    assert model.factors is not None and model.factors.forms == 3  # zi_gamma 2 + completion 1
    x = make_inputs(spec, 1, 5)
    parts = model.forward_parts(x)
    terms = model.factors(x)
    assert set(terms) == {"watch_time", "completion"}
    with torch.no_grad():
        for group in (model.factors.user, model.factors.item):
            group.table.weight.zero_()
    bare = model.forward_parts(x)
    torch.testing.assert_close(parts.raw["click"], bare.raw["click"])
    torch.testing.assert_close(
        parts.raw["completion"], bare.raw["completion"] + terms["completion"]
    )
    assert model.hparams()["config"]["factor_tasks"] == ["watch_time", "completion"]
    with pytest.raises(ValueError, match="factor_tasks: unknown tasks"):
        build_model("mmoe", spec, tasks, {**config, "factor_tasks": ["clicks"]})


def test_batched_graph_input_reaches_the_terms(spec: FeatureSpec, make_inputs) -> None:
    model = build_model("mmoe", spec, config={**MMOE, "factor_rank": 2}).eval()
    two = make_inputs(spec, 2, 4, seed=5)
    rows = torch.tensor([1, 0, 1, 1])
    batched = model({**two, REQUEST_INDEX: rows})
    for r in (0, 1):
        single = {k: v[r : r + 1] if k.startswith("user") else v for k, v in two.items()}
        picked = rows == r
        for task, value in model(single).items():
            torch.testing.assert_close(batched[task][picked], value[picked])


def test_factor_l2_penalises_the_factor_rows_a_batch_reads(spec: FeatureSpec, make_inputs) -> None:
    model = build_model("mmoe", spec, config={**MMOE, "factor_rank": 2})
    x = make_inputs(spec, 4, 4)
    y = {"click": torch.ones(4), "watch_time": torch.ones(4), "completion": torch.ones(4) / 2}
    with pytest.raises(ValueError, match="factor_l2 must be >= 0"):
        MultiTaskTrainingModel(model, factor_l2=-1.0)
    assert MultiTaskTrainingModel(model)(x, y).penalty is None
    step = MultiTaskTrainingModel(model, factor_l2=0.5)(x, y)
    assert model.factors is not None
    want = sum(v.pow(2).sum(dim=(1, 2)).mean() for v in model.factors.field_vectors(x)[0])
    assert step.penalty is not None
    torch.testing.assert_close(step.penalty, 0.5 * want)
    step.penalty.backward()
    grad = model.factors.user.table.weight.grad
    assert grad is not None and bool((grad.abs().sum(1) > 0).any())
    # embedding_l2 is 0: the shared tables are not pushed.
    shared = model.inputs.user.table
    assert shared is not None and (shared.weight.grad is None or not shared.weight.grad.any())


def test_train_config_names_the_bad_factor_keys() -> None:
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"optimizer\.factor_l2: must be >= 0"):
        load_config(None, ["optimizer.factor_l2=-0.1"])
    with pytest.raises(ConfigError, match="factor_rank must be an integer >= 0"):
        load_config(None, ["model.config.factor_rank=-1"])
    config = load_config(None, ["model.config.factor_rank=4", "optimizer.factor_l2=0.01"])
    assert config.optimizer.factor_l2 == 0.01
