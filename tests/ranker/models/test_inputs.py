import pytest
import torch

from ranker.models.inputs import InputLayer, check_inputs, input_names
from ranker.schema import DenseStats, Feature, FeatureSpec, SpecError, spec_of


def test_input_names_follow_group_and_kind_order(spec: FeatureSpec) -> None:
    assert input_names(spec) == [
        "user_cat", "user_multi", "user_dense", "item_cat", "item_multi", "item_dense"
    ]  # fmt: skip


def test_output_widths(spec: FeatureSpec, make_inputs) -> None:
    layer = InputLayer(spec, embedding_dim=8)
    user, item = layer(make_inputs(spec, 1, 5))
    assert layer.out_dims == (8 * 4 + 1, 8 * 3 + 2)
    assert user.shape == (1, 33) and item.shape == (5, 26)


def test_multi_valued_mean_pooling_ignores_padding(spec: FeatureSpec, make_inputs) -> None:
    layer = InputLayer(spec, embedding_dim=8)
    x = make_inputs(spec, 1, 3)
    # tags (4 columns, table rows [200, 251)) then topics (2 columns, rows [251, 282)).
    x["item_multi"] = torch.tensor([[5, 7, 0, 0, 3, 0], [5, 0, 7, 0, 3, 0], [0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        layer.item.table.weight[200] = 1e6  # the padding row of `tags`: must never be read
        layer.item.table.weight[251] = 1e6
        _, item = layer(x)
    table = layer.item.table.weight
    tags = item[:, 8:16]
    topics = item[:, 16:24]
    expected = (table[205] + table[207]) / 2
    torch.testing.assert_close(tags[0], expected)
    torch.testing.assert_close(tags[1], expected)  # padding position does not matter
    torch.testing.assert_close(topics[0], table[251 + 3])
    assert torch.equal(tags[2], torch.zeros(8)) and torch.equal(topics[2], torch.zeros(8))


def test_dense_standardised_with_baked_stats(spec: FeatureSpec, make_inputs) -> None:
    layer = InputLayer(spec, embedding_dim=8)
    x = make_inputs(spec, 2, 2)
    x["item_dense"] = torch.tensor([[3.0, 2.0], [4.2, 6.0]])
    _, item = layer(x)
    torch.testing.assert_close(item[:, -2:], torch.tensor([[0.0, 0.0], [1.0, 2.0]]))
    assert {"item.dense_mean", "item.dense_std"} <= set(layer.state_dict())


def test_unfitted_spec_rejected() -> None:
    raw = spec_of(
        [
            Feature("u", "user", "categorical", buckets=4),
            Feature("duration", "item", "dense", transform="log1p"),
        ]
    )
    with pytest.raises(SpecError, match=r"not fitted: dense features \['duration'\]"):
        InputLayer(raw, embedding_dim=4)


def test_missing_input_named(spec: FeatureSpec, make_inputs) -> None:
    x = make_inputs(spec, 1, 2)
    del x["item_multi"]
    with pytest.raises(KeyError, match="item_multi"):
        InputLayer(spec, 4)(x)


def test_check_inputs(spec: FeatureSpec, make_inputs) -> None:
    x = make_inputs(spec, 1, 4)
    check_inputs(spec, x)
    bad = dict(x, item_cat=x["item_cat"].clone())
    bad["item_cat"][0, 0] = 200
    with pytest.raises(ValueError, match="item_cat: feature 'item_id' ids outside"):
        check_inputs(spec, bad)
    with pytest.raises(ValueError, match="user batch must be 1 or the item batch 4"):
        check_inputs(spec, make_inputs(spec, 3, 4))
    with pytest.raises(KeyError, match="missing"):
        check_inputs(spec, {k: v for k, v in x.items() if k != "user_dense"})


def test_dense_only_group_has_no_table(make_inputs) -> None:
    spec = spec_of(
        [
            Feature("activity", "user", "dense"),
            Feature("item_id", "item", "categorical", buckets=10),
        ]
    ).with_stats({"activity": DenseStats(0.0, 2.0)})
    layer = InputLayer(spec, embedding_dim=4)
    assert layer.user.table is None
    user, item = layer(make_inputs(spec, 1, 3))
    assert user.shape == (1, 1) and item.shape == (3, 4)


def test_sparse_gradients_name_only_the_rows_read(spec: FeatureSpec, make_inputs) -> None:
    from ranker.models.inputs import use_sparse_gradients

    layer = InputLayer(spec, embedding_dim=4)
    x = make_inputs(spec, 3, 3)
    dense_user, dense_item = layer(x)
    (dense_user.sum() + dense_item.sum()).backward()
    user_table, item_table = layer.user.table, layer.item.table
    assert user_table is not None and item_table is not None
    tables = [user_table, item_table]
    dense_grads = [t.weight.grad.clone() for t in tables if t.weight.grad is not None]
    layer.zero_grad(set_to_none=True)

    weights = use_sparse_gradients(layer)
    assert weights == [t.weight for t in tables]
    user, item = layer(x)
    torch.testing.assert_close(user, dense_user)  # the forward is unchanged
    (user.sum() + item.sum()).backward()
    for table, offsets, dense in zip(
        (layer.user, layer.item), ("user", "item"), dense_grads, strict=True
    ):
        grad = table.table.weight.grad if table.table is not None else None
        assert grad is not None and grad.is_sparse
        read = torch.cat(
            [x[f"{offsets}_cat"] + table.cat_offsets, x[f"{offsets}_multi"] + table.multi_offsets],
            dim=1,
        ).unique()
        assert torch.equal(grad.coalesce().indices()[0], read)
        torch.testing.assert_close(grad.to_dense(), dense)

    use_sparse_gradients(layer, sparse=False)
    layer.zero_grad(set_to_none=True)
    layer(x)[1].sum().backward()
    assert item_table.weight.grad is not None and not item_table.weight.grad.is_sparse
