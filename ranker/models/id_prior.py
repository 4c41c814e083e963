"""Per-id L2 on embedding rows: a prior on each id, not a penalty on each read of it.

An L2 penalty on the rows a batch reads (`optimizer.embedding_l2`) charges an id once per
impression, so over an epoch its vector is held by l2 * n_id * ||v||^2 against n_id impressions'
loss: the same strength relative to the evidence whatever n_id is. A Gaussian prior on the id's
vector (MAP, as matrix factorisation fits it) charges lambda * ||v||^2 once, so the evidence wins as
impressions accumulate and rare ids are held harder than frequent ones. Weighting each read by
mean_count / n_id (the "mini-batch aware" regularisation of Zhou et al., 2018, Deep Interest
Network) turns the read penalty into that prior, at the strength the read penalty had for an id
of the feature's mean count; `alpha` in [0, 1] interpolates (0: per read, 1: per id).

Measured (docs/results.md): alpha 0.5 is level on the quality benchmark's world (~260 training
impressions per user) and gains click AUC on a sparser one, where rare ids are many. The weighted
penalty charges every table row read (a multi-categorical feature's tags one by one; the read
penalty takes their pooled mean), from the vectors the forward pass gathered (`TableRead`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ranker.models.inputs import GroupInput, TableRead


def table_rows(group: GroupInput, inputs: Mapping[str, Tensor | np.ndarray]) -> Tensor:
    """The table rows a group's embeddings read for each row: [B, n_cat + multi_width] (as the
    group's forward computes them; multi-categorical padding reads the feature's zero row)."""
    ids = []
    if group.n_cat:
        ids.append(torch.as_tensor(inputs[f"{group.group}_cat"]) + group.cat_offsets)
    if group.n_multi:
        ids.append(torch.as_tensor(inputs[f"{group.group}_multi"]) + group.multi_offsets)
    return torch.cat(ids, dim=1)


def row_counts(group: GroupInput, inputs: Mapping[str, Tensor | np.ndarray]) -> np.ndarray:
    """How often `inputs` read each row of the group's table: [table rows] int64 (summable over
    the chunks of a streamed log)."""
    if group.table is None:
        raise ValueError(f"the {group.group} group has no embedding table")
    rows = table_rows(group, inputs).numpy().ravel()
    return np.bincount(rows, minlength=group.table.num_embeddings)


def read_weights(group: GroupInput, counts: np.ndarray, alpha: float = 1.0) -> Tensor:
    """Per table row, the weight of one read: (mean count / count) ** alpha, the mean running
    over the rows of the same feature that were read; 0 for rows never read and for
    multi-categorical padding (read through a zero mask, never learnt)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    counts = counts.astype(np.float64).copy()
    size = len(counts)
    padding = group.multi_offsets.unique().tolist()
    counts[padding] = 0
    starts = sorted({*group.cat_offsets.tolist(), *padding})
    weights = np.zeros(size, dtype=np.float64)
    for start, end in zip(starts, [*starts[1:], size], strict=True):
        feature = counts[start:end]
        seen = feature > 0
        if seen.any():
            weights[start:end][seen] = (feature[seen].mean() / feature[seen]) ** alpha
    return torch.as_tensor(weights, dtype=torch.float32)


def weighted_penalty(read: TableRead, weights: Tensor) -> Tensor:
    """Mean over the batch of the sum over a row's reads of weight(table row) * ||vector||^2."""
    squares = read.vectors.pow(2).sum(dim=-1)  # [B, reads]
    return (squares * weights.to(squares.device)[read.rows]).sum(dim=1).mean()
