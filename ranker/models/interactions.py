"""Explicit user x item interactions: pairwise dot products of field embeddings (FM / DLRM style).

The simulated worlds, and the held-out ones, draw outcomes from user x item latent dot products,
and MLPs learn dot products poorly (Rendle et al., 2020, "Neural Collaborative Filtering vs. Matrix
Factorization Revisited"): their first layer splits into W_u u + W_i i, a sum, never a product.
Feeding the experts <e_f, e_g> for every user-side field f and item-side field g gives them the
product directly, as factorisation machines and DLRM's interaction layer do.

The user side stays computed once per request: the user field embeddings are [1, F_u, D] in
serving and broadcast against the candidates' [N, F_i, D]; only the F_u * F_i dots are per
candidate (F_u * F_i * D multiply-adds, a few hundred, next to the experts' first layer).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ranker.models.inputs import GroupInput, InputLayer

InteractionKind = Literal["none", "dot"]
INTERACTIONS: tuple[str, ...] = ("none", "dot")


def check_interactions(kind: str) -> None:
    """Refuse an unknown interaction kind, naming the valid ones."""
    if kind not in INTERACTIONS:
        raise ValueError(f"interactions must be one of {list(INTERACTIONS)}, got {kind!r}")


def embedded_fields(group: GroupInput) -> int:
    """Fields of a group that have an embedding: categorical and multi-categorical features."""
    return group.n_cat + group.n_multi


def field_embeddings(x: Tensor, fields: int, dim: int) -> Tensor:
    """The per-field embeddings inside a group's input vector: [B, out_dim] -> [B, fields, dim].

    `GroupInput` lays its output out as the categorical embeddings, then the pooled
    multi-categorical ones, each `dim` wide, then the dense features, so the first fields * dim
    columns are the fields. Reading them back keeps the input layer unchanged.
    """
    return x[:, : fields * dim].unflatten(1, (fields, dim))


class FieldDots(nn.Module):
    """(user [B_u, d_user], item [N, d_item]) from `InputLayer` -> [N, F_u * F_i] dot products,
    entry f * F_i + g = <user field f, item field g>. B_u is 1 (one request) or N (row-wise).

    Example: 9 user/context fields and 4 item fields of width 16 -> 36 dots per candidate.
    No parameters: the embeddings are the input layer's.
    """

    def __init__(self, inputs: InputLayer) -> None:
        super().__init__()
        # Sizes only: holding the groups here would register the embedding tables twice.
        self.user_fields = embedded_fields(inputs.user)
        self.item_fields = embedded_fields(inputs.item)
        self.dim = inputs.user.embedding_dim
        if not self.user_fields or not self.item_fields:
            raise ValueError(
                "interactions: dot needs embedded (categorical or multi-categorical) features on "
                f"both sides; the spec has {self.user_fields} on the user side and "
                f"{self.item_fields} on the item side"
            )

    @property
    def out_dim(self) -> int:
        return self.user_fields * self.item_fields

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        u = field_embeddings(user, self.user_fields, self.dim)  # [B_u, F_u, D]
        i = field_embeddings(item, self.item_fields, self.dim)  # [N, F_i, D]
        # Batched matmul broadcasts B_u = 1 against N: [N, F_u, D] @ [N, D, F_i] -> [N, F_u, F_i].
        return torch.matmul(u, i.transpose(1, 2)).flatten(1)


def make_interactions(kind: str, inputs: InputLayer) -> FieldDots | None:
    """The configured interaction layer, or None for `none`."""
    check_interactions(kind)
    return FieldDots(inputs) if kind == "dot" else None
