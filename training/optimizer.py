"""The trainer's optimiser: Adam on dense layers, SparseAdam on row-sparse embedding tables.

Embedding tables get sparse gradients (`ranker.models.inputs.use_sparse_gradients`): SparseAdam
keeps Adam's moments per element but updates only the rows a batch touched (the "lazy Adam" of
large recommenders), so a step costs what the batch reads, not the table size. Every other
parameter keeps dense Adam with its group's learning rate (per-task towers, balancer parameters).
Weight decay applies to the dense layers only: SparseAdam has none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor


class SplitOptimizer:
    """Adam over the dense groups plus SparseAdam over the sparse ones, stepped together.

    `param_groups` lists both (dense first), so per-group learning rates stay visible; the state
    dict holds both optimisers' states under `dense` and `sparse`.
    """

    def __init__(
        self, groups: Sequence[dict[str, Any]], sparse: Iterable[Tensor], weight_decay: float
    ) -> None:
        sparse_ids = {id(p) for p in sparse}
        dense_groups, sparse_groups = [], []
        for group in groups:
            params = list(group["params"])
            rows = [p for p in params if id(p) in sparse_ids]
            rest = [p for p in params if id(p) not in sparse_ids]
            if rest:
                dense_groups.append({**group, "params": rest})
            if rows:
                sparse_groups.append(
                    {**group, "name": f"{group['name']}_embeddings", "params": rows}
                )
        self.dense = torch.optim.Adam(dense_groups, weight_decay=weight_decay)
        self.sparse = torch.optim.SparseAdam(sparse_groups) if sparse_groups else None

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        groups = list(self.dense.param_groups)
        if self.sparse is not None:
            groups += self.sparse.param_groups
        return groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        if self.sparse is not None:
            self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        if self.sparse is not None:
            self.sparse.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "dense": self.dense.state_dict(),
            "sparse": None if self.sparse is None else self.sparse.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "dense" not in state or (state["sparse"] is None) != (self.sparse is None):
            raise ValueError(
                "optimizer state does not match this run's optimiser (dense Adam + "
                f"{'SparseAdam' if self.sparse is not None else 'no sparse tables'}); "
                "was the checkpoint written with another optimizer.sparse_embeddings setting?"
            )
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None:
            self.sparse.load_state_dict(state["sparse"])


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients, dense and sparse, so their global L2 norm is at most `max_norm`;
    returns the norm before clipping (`torch.nn.utils.clip_grad_norm_` refuses sparse ones)."""
    grads: list[Tensor] = []
    squares: list[Tensor] = []
    for p in parameters:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # repeated rows must add up before the norm
            squares.append(p.grad.values().double().pow(2).sum())
        else:
            squares.append(p.grad.double().pow(2).sum())
        grads.append(p.grad)
    if not grads:
        return 0.0
    total = float(torch.stack(squares).sum().sqrt())
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 and math.isfinite(total):
        for g in grads:
            g.mul_(coef)
    return total
