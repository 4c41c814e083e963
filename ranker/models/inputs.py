"""Input layer: encoded feature arrays -> one dense vector per row for each input group.

The encoder (`ranker.features`) gives, per group g in {"user", "item"}, the keys present for the
kinds the group has:
  {g}_cat   int64   [B, n_cat]          bucket ids in [0, buckets), spec order
  {g}_multi int64   [B, sum(max_len)]   per feature max_len columns, 0 = padding, ids in [1, buckets]
  {g}_dense float32 [B, n_dense]        transformed (log1p), not standardised
B is 1 or N for the user group and N for the item group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ranker.schema import FeatureSpec, SpecError

GROUPS: tuple[str, ...] = ("user", "item")
# Input-key suffix per feature kind, in the order the keys are listed.
KIND_KEYS: dict[str, str] = {"categorical": "cat", "multi_categorical": "multi", "dense": "dense"}


def input_names(spec: FeatureSpec) -> list[str]:
    """The model's input keys (= ONNX input names) in a fixed order: user then item, cat/multi/dense."""
    return [
        f"{group}_{suffix}"
        for group in GROUPS
        for kind, suffix in KIND_KEYS.items()
        if spec.select(group, kind)  # type: ignore[arg-type]
    ]


class TableRead(NamedTuple):
    """What one forward pass read from a group's table: the rows [B, k] and their vectors
    [B, k, D] (categorical fields, then every multi-categorical column, padding included). The
    L2 penalties take them from the forward instead of looking the rows up a second time."""

    group: GroupInput
    rows: Tensor
    vectors: Tensor


class GroupInput(nn.Module):
    """One input group: embeddings of its categorical and multi-categorical features, concatenated
    with its standardised dense features. Output [B, out_dim], out_dim = D * (n_cat + n_multi) + n_dense.

    All embeddings of the group live in one table (one gather per forward): categorical feature f
    owns rows [off_f, off_f + buckets), multi-categorical feature f owns [off_f, off_f + buckets + 1)
    with its padding id 0 at row off_f. Multi-valued features are mean-pooled over their non-padding
    ids; an all-padding row gives a zero vector.
    """

    cat_offsets: Tensor  # [n_cat] first table row of each categorical feature
    multi_offsets: Tensor  # [multi_width] first table row of the feature owning each multi column
    pool: Tensor  # [multi_width, n_multi] column-to-feature membership (0/1)
    dense_mean: Tensor  # [n_dense] fitted mean after the transform
    dense_std: Tensor  # [n_dense] fitted std after the transform

    def __init__(self, spec: FeatureSpec, group: str, embedding_dim: int) -> None:
        super().__init__()
        self.group = group
        cats = spec.select(group, "categorical")  # type: ignore[arg-type]
        multis = spec.select(group, "multi_categorical")  # type: ignore[arg-type]
        denses = spec.select(group, "dense")  # type: ignore[arg-type]
        self.n_cat, self.n_multi, self.n_dense = len(cats), len(multis), len(denses)
        self.multi_width = sum(f.max_len for f in multis)
        self.embedding_dim = embedding_dim

        cat_offsets, multi_offsets, pool_columns = [], [], []
        rows = 0
        for f in cats:
            cat_offsets.append(rows)
            rows += f.buckets
        for j, f in enumerate(multis):
            multi_offsets += [rows] * f.max_len
            pool_columns += [j] * f.max_len
            rows += f.buckets + 1
        # No table for a dense-only group: a parameter without gradients would trouble DDP.
        self.table = nn.Embedding(rows, embedding_dim) if rows else None
        if self.table is not None:
            nn.init.normal_(self.table.weight, std=0.05)
            with torch.no_grad():  # padding rows: never read through the mask, zero for clarity
                for offset in sorted(set(multi_offsets)):
                    self.table.weight[offset].zero_()
        self.register_buffer("cat_offsets", torch.tensor(cat_offsets, dtype=torch.int64))
        self.register_buffer("multi_offsets", torch.tensor(multi_offsets, dtype=torch.int64))
        # pool[l, j] = 1 when multi column l belongs to multi feature j.
        pool = torch.zeros(self.multi_width, self.n_multi)
        pool[torch.arange(self.multi_width), torch.tensor(pool_columns, dtype=torch.int64)] = 1.0
        self.register_buffer("pool", pool)
        self.register_buffer("dense_mean", torch.tensor([f.stats.mean for f in denses]))  # type: ignore[union-attr]
        self.register_buffer("dense_std", torch.tensor([f.stats.std for f in denses]))  # type: ignore[union-attr]

    @property
    def out_dim(self) -> int:
        return self.embedding_dim * (self.n_cat + self.n_multi) + self.n_dense

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.forward_read(inputs)[0]

    def forward_read(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, TableRead | None]:
        """The group's vector [B, out_dim] and what it read from the table (None: no table)."""
        g = self.group
        ids = []
        if self.n_cat:
            ids.append(_get(inputs, f"{g}_cat") + self.cat_offsets)
        if self.n_multi:
            multi = _get(inputs, f"{g}_multi")
            ids.append(multi + self.multi_offsets)
        parts = []
        read = None
        if self.table is not None:
            rows = torch.cat(ids, dim=1)
            emb = self.table(rows)  # [B, n_cat + multi_width, D]
            read = TableRead(self, rows, emb)
            if self.n_cat:
                parts.append(emb[:, : self.n_cat].flatten(1))  # [B, n_cat * D]
            if self.n_multi:
                mask = (multi > 0).to(emb.dtype)  # [B, L]
                weights = mask.unsqueeze(-1) * self.pool  # [B, L, n_multi]
                counts = weights.sum(dim=1).clamp_min(1.0)  # [B, n_multi]
                sums = torch.bmm(weights.transpose(1, 2), emb[:, self.n_cat :])  # [B, n_multi, D]
                parts.append((sums / counts.unsqueeze(-1)).flatten(1))  # [B, n_multi * D]
        if self.n_dense:
            dense = _get(inputs, f"{g}_dense")
            parts.append((dense - self.dense_mean) / self.dense_std)  # [B, n_dense]
        return (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]), read


class InputLayer(nn.Module):
    """Encoded inputs -> (user [B_u, d_user], item [N, d_item]); see the module docstring for keys.

    Refuses a spec whose dense features have no fitted statistics: the standardisation is baked
    into the model (buffers), so the exported graph carries it.
    """

    def __init__(self, spec: FeatureSpec, embedding_dim: int) -> None:
        super().__init__()
        unfitted = [f.name for f in spec.features if f.kind == "dense" and f.stats is None]
        if unfitted:
            raise SpecError(
                f"feature spec is not fitted: dense features {unfitted} have no stats; "
                "fit them on the training window (FeatureSpec.with_stats) before building a model"
            )
        for group in GROUPS:
            if not any(f.group == group for f in spec.features):
                raise SpecError(f"feature spec has no {group}-group features; the model needs both")
        self.input_names = input_names(spec)
        self.user = GroupInput(spec, "user", embedding_dim)
        self.item = GroupInput(spec, "item", embedding_dim)

    @property
    def out_dims(self) -> tuple[int, int]:
        return (self.user.out_dim, self.item.out_dim)

    def forward(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.user(inputs), self.item(inputs)

    def forward_read(
        self, inputs: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor, tuple[TableRead, ...]]:
        """(user, item) as `forward` gives them, and what their tables read."""
        user, user_read = self.user.forward_read(inputs)
        item, item_read = self.item.forward_read(inputs)
        return user, item, tuple(r for r in (user_read, item_read) if r is not None)


def embedding_tables(module: nn.Module) -> list[nn.Embedding]:
    """The embedding tables of every input layer inside `module` (one per input group)."""
    return [m.table for m in module.modules() if isinstance(m, GroupInput) and m.table is not None]


def use_sparse_gradients(module: nn.Module, sparse: bool = True) -> list[Tensor]:
    """Switch the embedding tables in `module` to row-sparse gradients (or back); their weights.

    A batch reads a few thousand rows of a table that can hold millions: a sparse gradient names
    only those rows, so the all-reduce and a row-wise optimiser (SparseAdam) touch only them. The
    forward and the exported graph are unchanged; dense optimisers such as Adam refuse sparse
    gradients, so models start dense and the trainer opts in.
    """
    tables = embedding_tables(module)
    for table in tables:
        table.sparse = sparse
    return [table.weight for table in tables]


def check_inputs(spec: FeatureSpec, inputs: Mapping[str, Tensor]) -> None:
    """Validate keys, dtypes, shapes and id ranges against the spec (eager only; not in forward,
    so the exported graph stays free of data-dependent checks). Errors name the key and feature."""
    expected = input_names(spec)
    missing = [k for k in expected if k not in inputs]
    extra = sorted(set(inputs) - set(expected))
    if missing or extra:
        raise KeyError(f"model inputs: missing {missing}, unexpected {extra}; expected {expected}")
    batch = {g: -1 for g in GROUPS}
    for key in expected:
        group, suffix = key.split("_", 1)
        x = inputs[key]
        dtype = torch.float32 if suffix == "dense" else torch.int64
        if x.dtype != dtype or x.dim() != 2:
            raise ValueError(f"{key}: expected 2-d {dtype}, got {x.dim()}-d {x.dtype}")
        if batch[group] not in (-1, x.shape[0]):
            raise ValueError(f"{key}: batch {x.shape[0]} differs from the other {group} inputs")
        batch[group] = x.shape[0]
        kind = {v: k for k, v in KIND_KEYS.items()}[suffix]
        feats = spec.select(group, kind)  # type: ignore[arg-type]
        widths = [f.max_len if suffix == "multi" else 1 for f in feats]
        if x.shape[1] != sum(widths):
            raise ValueError(f"{key}: expected {sum(widths)} columns, got {x.shape[1]}")
        if suffix == "dense":
            if not torch.isfinite(x).all():
                raise ValueError(f"{key}: non-finite values")
            continue
        lo = 0
        for f, w in zip(feats, widths, strict=True):
            col = x[:, lo : lo + w]
            top = f.buckets if suffix == "multi" else f.buckets - 1
            if col.numel() and (col.min() < 0 or col.max() > top):
                raise ValueError(f"{key}: feature {f.name!r} ids outside [0, {top}]")
            lo += w
    if batch["user"] not in (1, batch["item"]):
        raise ValueError(
            f"user batch must be 1 or the item batch {batch['item']}, got {batch['user']}"
        )


def _get(inputs: Mapping[str, Tensor], key: str) -> Tensor:
    try:
        return inputs[key]
    except KeyError:
        raise KeyError(f"model input {key!r} is missing; got {sorted(inputs)}") from None
