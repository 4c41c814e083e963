"""User x item field dot products: what they compute, how they broadcast, and the models using them."""

import pytest
import torch

from ranker.models import build_model
from ranker.models.inputs import InputLayer
from ranker.models.interactions import FieldDots, field_embeddings
from ranker.models.layers import SplitLinear
from ranker.schema import DenseStats, Feature, FeatureSpec, spec_of

SMALL = {
    "mmoe": {"num_experts": 3, "expert_units": [16, 8]},
    "ple": {"num_levels": 2, "num_task_experts": 1, "expert_units": [16, 8]},
}


def _fields_by_lookup(layer: InputLayer, x: dict[str, torch.Tensor], group: str) -> torch.Tensor:
    """[B, F, D] field embeddings read straight from the table (cat rows, mean-pooled multi)."""
    g = getattr(layer, group)
    table = g.table.weight
    fields = [table[x[f"{group}_cat"][:, j] + g.cat_offsets[j]] for j in range(g.n_cat)]
    if g.n_multi:
        ids = x[f"{group}_multi"]
        for j in range(g.n_multi):
            cols = (g.pool[:, j] > 0).nonzero().flatten()
            rows = table[ids[:, cols] + g.multi_offsets[cols]]  # [B, L, D]
            mask = (ids[:, cols] > 0).float().unsqueeze(-1)
            fields.append((rows * mask).sum(1) / mask.sum(1).clamp_min(1.0))
    return torch.stack(fields, dim=1)


def test_field_embeddings_are_the_input_layer_embeddings(spec: FeatureSpec, make_inputs) -> None:
    layer = InputLayer(spec, embedding_dim=8)
    x = make_inputs(spec, 4, 4)
    user, item = layer(x)
    dots = FieldDots(layer)
    # user_id, device, hour and user_tags; item_id, tags and topics.
    assert (dots.user_fields, dots.item_fields, dots.out_dim) == (4, 3, 12)
    for group, out, fields in (("user", user, 4), ("item", item, 3)):
        torch.testing.assert_close(
            field_embeddings(out, fields, 8), _fields_by_lookup(layer, x, group)
        )


def test_dots_pair_every_user_field_with_every_item_field(spec: FeatureSpec, make_inputs) -> None:
    layer = InputLayer(spec, embedding_dim=8)
    x = make_inputs(spec, 1, 5)
    user, item = layer(x)
    out = FieldDots(layer)(user, item)
    assert out.shape == (5, 12)
    u, i = _fields_by_lookup(layer, x, "user"), _fields_by_lookup(layer, x, "item")
    for f in range(4):
        for g in range(3):
            torch.testing.assert_close(out[:, f * 3 + g], (u[0, f] * i[:, g]).sum(-1))
    # One request's user row broadcasts: same as the user row repeated per candidate.
    repeated = FieldDots(layer)(user.expand(5, -1), item)
    torch.testing.assert_close(out, repeated, rtol=0, atol=1e-7)


def test_dots_need_embedded_fields_on_both_sides() -> None:
    spec = spec_of(
        [
            Feature("user_id", "user", "categorical", buckets=10),
            Feature("duration", "item", "dense", transform="log1p"),
        ]
    ).with_stats({"duration": DenseStats(1.0, 1.0)})
    with pytest.raises(ValueError, match="0 on the item side"):
        FieldDots(InputLayer(spec, embedding_dim=4))


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_models_with_dot_interactions(kind: str, spec: FeatureSpec, make_inputs) -> None:
    config = {"embedding_dim": 8, "tower_units": [8], **SMALL[kind]}
    plain = build_model(kind, spec, config=config)
    model = build_model(kind, spec, config={**config, "interactions": "dot"}).eval()
    # The dots are an input part of the first layer: no new tables, no duplicated state.
    assert {k for k in model.state_dict() if "table" in k} == {
        k for k in plain.state_dict() if "table" in k
    }
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in plain.parameters())
    assert model.hparams()["config"]["interactions"] == "dot"
    x = make_inputs(spec, 1, 7)
    repeated = {k: v.expand(7, -1) if k.startswith("user") else v for k, v in x.items()}
    one, many = model(x), model(repeated)
    for task in one:
        assert one[task].shape == (7,) and torch.isfinite(one[task]).all()
        torch.testing.assert_close(one[task], many[task], rtol=0, atol=1e-6)
    # Every first-layer split linear (experts, gates) reads the 12 dots as a third part and uses it.
    firsts = [m for m in model.modules() if isinstance(m, SplitLinear) and len(m.in_dims) == 3]
    assert firsts and all(m.in_dims[2] == 12 for m in firsts)
    with torch.no_grad():
        for m in firsts:
            m.weights[2].zero_()
    assert not torch.equal(model(x)["click"], one["click"])


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_unknown_interaction_kind_is_named(kind: str, spec: FeatureSpec) -> None:
    with pytest.raises(ValueError, match=r"interactions must be one of \['none', 'dot'\]"):
        build_model(kind, spec, config={"interactions": "cross"})
