"""Per-id L2 (ranker.models.id_prior): read weights from training counts, and the penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranker.models import MultiTaskTrainingModel, build_model
from ranker.models.id_prior import read_weights, row_counts, table_rows, weighted_penalty
from ranker.models.inputs import GroupInput, TableRead

CONFIG = {"num_experts": 2, "expert_units": [8], "tower_units": [4], "embedding_dim": 8}


def test_counts_and_weights_follow_each_feature(spec) -> None:
    group = GroupInput(spec, "item", 4)  # item_id (200), tags (50, max_len 4), topics (30, 2)
    inputs = {
        "item_cat": torch.tensor([[5], [5], [5], [7]]),
        "item_multi": torch.tensor([[1, 2, 0, 0, 3, 0]] * 3 + [[1, 0, 0, 0, 0, 0]]),
    }
    counts = row_counts(group, inputs)
    assert counts[5] == 3 and counts[7] == 1 and counts.sum() == 4 * 7
    tags = int(group.multi_offsets[0])
    assert counts[tags + 1] == 4 and counts[tags + 2] == 3
    weights = read_weights(group, counts).numpy()
    # item_id: mean count over the ids read (2), divided by each id's count.
    np.testing.assert_allclose(weights[[5, 7]], [2 / 3, 2.0])
    assert weights[6] == 0.0  # never read
    # tags: ids 1 (4 reads) and 2 (3 reads); padding rows weigh nothing.
    np.testing.assert_allclose(weights[[tags + 1, tags + 2]], [3.5 / 4, 3.5 / 3], rtol=1e-6)
    assert weights[tags] == 0.0
    # alpha 0 is the read penalty: every row read weighs 1.
    flat = read_weights(group, counts, alpha=0.0).numpy()
    assert set(flat[counts > 0].tolist()) - {0.0} == {1.0}
    with pytest.raises(ValueError, match="alpha"):
        read_weights(group, counts, alpha=1.5)


def test_an_id_pays_the_same_per_epoch_whatever_its_count(spec) -> None:
    group = GroupInput(spec, "item", 4)
    ids = torch.tensor([[3]] * 9 + [[8]])  # id 3 read 9 times, id 8 once
    inputs = {
        "item_cat": ids,
        "item_multi": torch.zeros(10, 6, dtype=torch.int64),
        "item_dense": torch.zeros(10, group.n_dense),
    }
    weights = read_weights(group, row_counts(group, inputs))
    with torch.no_grad():
        group.table.weight.fill_(1.0)  # every row's squared norm: 4
    rows = table_rows(group, inputs)[:, 0]
    per_read = weights[rows] * 4.0
    # Summed over the epoch's reads each id pays mean_count * ||v||^2 = 5 * 4, once.
    assert per_read[:9].sum().item() == pytest.approx(20.0)
    assert per_read[9].item() == pytest.approx(20.0)
    _, read = group.forward_read(inputs)
    assert read is not None
    torch.testing.assert_close(read.rows, table_rows(group, inputs))
    penalty = weighted_penalty(read, weights)
    assert penalty.item() == pytest.approx(40.0 / 10)


def lookup_penalty(group: GroupInput, inputs, weights: torch.Tensor) -> torch.Tensor:
    """The weighted penalty from a lookup of its own: what the forward's reads must equal."""
    rows = table_rows(group, inputs)
    return weighted_penalty(TableRead(group, rows, group.table(rows)), weights)


def test_training_model_uses_the_prior_on_embeddings_and_factors(spec, make_inputs) -> None:
    model = build_model("mmoe", spec, config={**CONFIG, "factor_rank": 2})
    x = make_inputs(spec, 16, 16)
    y = {
        "click": torch.randint(0, 2, (16,)).float(),
        "watch_time": torch.rand(16) * 30,
        "completion": torch.rand(16),
    }
    wrapper = MultiTaskTrainingModel(model, embedding_l2=0.5, factor_l2=0.1)
    read = wrapper(x, y).penalty
    wrapper.use_id_prior([x, x], alpha=1.0)  # counted over two chunks
    assert len(wrapper.id_weights) == 4  # input tables and factor tables, both sides
    step = wrapper(x, y)
    assert step.penalty is not None and step.penalty.item() > 0
    assert not torch.isclose(step.penalty, read)
    groups = [model.inputs.user, model.inputs.item, model.factors.user, model.factors.item]
    want = sum(
        scale * lookup_penalty(g, x, w)
        for scale, (g, w) in zip([0.5, 0.5, 0.1, 0.1], wrapper.id_weights, strict=True)
    )
    assert [g for g, _ in wrapper.id_weights] == groups
    torch.testing.assert_close(step.penalty, want)
    # At alpha 0 every read weighs 1: the penalty reaches exactly the rows read, padding aside.
    wrapper.use_id_prior([x], alpha=0.0)
    item = model.inputs.item
    (grad,) = torch.autograd.grad(wrapper(x, y).penalty, item.table.weight)
    touched = set((grad.abs().sum(dim=1) > 0).nonzero().flatten().tolist())
    padding = set(item.multi_offsets.tolist())
    assert touched == set(table_rows(item, x).unique().tolist()) - padding
