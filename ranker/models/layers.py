"""Dense building blocks: split-input layers, batched experts, gates, MLPs.

No BatchNorm (PERF_NOTES): rows of one request must not influence each other, and serving batches
are one request. All experts of a block are one batched matmul per layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn


def _uniform_(param: Tensor, fan_in: int) -> None:
    # nn.Linear's default scale, for parameters we allocate ourselves.
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    nn.init.uniform_(param, -bound, bound)


class SplitLinear(nn.Module):
    """A dense layer on the concatenation [x_1; ...; x_k], computed part by part.

    W.[u; i] + b = (W_u.u + b) + W_i.i, so each part is multiplied on its own batch size and the
    sum broadcasts: the user part is computed once per request ([1, d_u]) and added to every
    candidate row ([N, d_i]). Parts: [B_k, in_dims[k]] with B_k in {1, N}; output [N, out_dim].
    Example: SplitLinear((40, 30), 64)((u[1, 40], i[N, 30])) -> [N, 64].
    """

    def __init__(self, in_dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        if not in_dims:
            raise ValueError("SplitLinear needs at least one input part")
        self.in_dims = tuple(in_dims)
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(d, out_dim)) for d in in_dims)
        self.bias = nn.Parameter(torch.empty(out_dim))
        for w in self.weights:
            _uniform_(w, sum(self.in_dims))
        _uniform_(self.bias, sum(self.in_dims))

    def forward(self, parts: Sequence[Tensor]) -> Tensor:
        out = torch.addmm(self.bias, parts[0], self.weights[0])
        for x, w in zip(parts[1:], self.weights[1:], strict=True):
            out = out + x @ w
        return out


class GroupLinear(nn.Module):
    """G independent dense layers as one batched matmul: [G, N, in_dim] -> [G, N, out_dim]."""

    def __init__(self, groups: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(groups, 1, out_dim))
        _uniform_(self.weight, in_dim)
        _uniform_(self.bias, in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(x, self.weight) + self.bias


class Experts(nn.Module):
    """E ReLU MLP experts, each layer one batched matmul over all experts.

    Two input modes, fixed at construction:
    - `in_dims` a sequence: every expert reads the same split input, given as its parts (see
      SplitLinear), e.g. (user [B_u, d_u], item [N, d_i]) -> [E, N, units[-1]].
    - `in_dims` an int: expert e reads its own input row x[e]: [E, N, in_dims] -> [E, N, units[-1]].
    """

    def __init__(
        self,
        num_experts: int,
        in_dims: int | Sequence[int],
        units: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not units:
            raise ValueError("experts need at least one layer")
        self.num_experts = num_experts
        self.units = tuple(units)
        self.split_input = not isinstance(in_dims, int)
        self.first: nn.Module
        if isinstance(in_dims, int):
            self.first = GroupLinear(num_experts, in_dims, units[0])
        else:
            self.first = SplitLinear(in_dims, num_experts * units[0])
        self.rest = nn.ModuleList(GroupLinear(num_experts, a, b) for a, b in pairwise(units))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def out_dim(self) -> int:
        return self.units[-1]

    def forward(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        h = self.first(x)
        if self.split_input:
            # [N, E * h0] -> [E, N, h0]
            h = h.unflatten(-1, (self.num_experts, self.units[0])).transpose(0, 1)
        h = self.dropout(torch.relu(h))
        for layer in self.rest:
            h = self.dropout(torch.relu(layer(h)))
        return h  # [E, N, units[-1]]


def mlp(in_dim: int, units: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear -> ReLU (-> Dropout) per entry of `units`; empty `units` is the identity."""
    layers: list[nn.Module] = []
    for out_dim in units:
        layers += [nn.Linear(in_dim, out_dim), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = out_dim
    return nn.Sequential(*layers)


def softmax_gate(logits: Tensor, expert_dropout: float, training: bool) -> Tensor:
    """Gate weights over the last axis; with expert dropout (training only) each expert is hidden
    from each gate row with probability `expert_dropout`, never all of a row's experts at once.
    Hiding experts at random keeps a gate from collapsing onto one or two experts (polarisation)."""
    if training and expert_dropout > 0:
        keep = torch.rand_like(logits) >= expert_dropout
        keep = keep | ~keep.any(dim=-1, keepdim=True)
        logits = logits.masked_fill(~keep, float("-inf"))
    return torch.softmax(logits, dim=-1)
