"""Per-task user x item factor terms added to the towers' raw outputs (a GMF part per task).

`interactions: dot` gives the experts products of the shared field embeddings, but a task then
reaches a product only through the shared experts and its tower's ReLUs, and every task reads the
same embeddings although tasks weigh different latent directions (what makes a user click is not
what makes them watch to the end). The shared embeddings are also the ones under the strong L2 an
MLP needs against memorising ids, which shrinks the directions only a weak task (completion, seen
on clicked rows only) supports. A factor term gives each raw output of each task its own rank-R
dot product of a user-side and an item-side vector, from tables of its own, added to the logit
(or log-mean) its tower emits: matrix factorisation's form (the "GMF" part of NeuMF; Rendle et
al., 2020), learnt jointly with the multi-task network, with its own, weaker L2
(`optimizer.factor_l2`).

The user side stays computed once per request: its vector is [1, forms * R] in serving and
broadcasts against the candidates' [N, forms * R]; per candidate it costs one lookup per item
field and forms * R multiply-adds. Training reuses the field vectors of the forward pass for the
L2 penalty (`terms_and_fields`, field vectors and table reads) rather than looking the rows up
again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ranker.models.inputs import GroupInput, TableRead
from ranker.models.interactions import embedded_fields, field_embeddings
from ranker.schema import FeatureSpec


class TaskFactors(nn.Module):
    """Encoded inputs -> {task: [N] or [N, width]} bilinear terms, from tables of their own.

    Each side's vector is the sum of its embedded fields' vectors (user and context fields on one
    side, item fields on the other, as a two-tower model sums them); every raw output of every
    task ("form") owns `rank` of its columns, so tasks share no factor. `widths[t]`: raw outputs
    per row of task t. The user side is [B_u, .] with B_u 1 (one request) or N (row-wise).
    """

    def __init__(
        self, spec: FeatureSpec, tasks: Sequence[str], widths: Mapping[str, int], rank: int
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"factor rank must be >= 1, got {rank}")
        self.task_names = tuple(tasks)
        self.widths = {t: int(widths.get(t, 1)) for t in self.task_names}
        self.rank = rank
        self.forms = sum(self.widths.values())
        self.user = GroupInput(spec, "user", self.forms * rank)
        self.item = GroupInput(spec, "item", self.forms * rank)
        for group in (self.user, self.item):
            if group.table is None:
                raise ValueError(
                    f"factor_rank needs embedded features on the {group.group} side; it has none"
                )

    def field_vectors(
        self, inputs: Mapping[str, Tensor]
    ) -> tuple[tuple[Tensor, Tensor], tuple[TableRead, ...]]:
        """Field embeddings of both sides, [B_u, fields, D] and [N, fields, D], and what their
        tables read."""
        fields, reads = [], []
        for g in (self.user, self.item):
            vector, read = g.forward_read(inputs)
            fields.append(field_embeddings(vector, embedded_fields(g), g.embedding_dim))
            if read is not None:
                reads.append(read)
        return (fields[0], fields[1]), tuple(reads)

    def terms_and_fields(
        self, inputs: Mapping[str, Tensor], rows: Tensor | None = None
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor], tuple[TableRead, ...]]:
        """The terms per task, the field vectors they were computed from and the table reads
        behind those (for the L2)."""
        fields, reads = self.field_vectors(inputs)
        user = fields[0].sum(1)
        if rows is not None:
            user = user.index_select(0, rows)
        products = user * fields[1].sum(1)  # [N, forms * R]
        terms = products.unflatten(-1, (self.forms, self.rank)).sum(-1)  # [N, forms]
        out: dict[str, Tensor] = {}
        start = 0
        for task in self.task_names:
            width = self.widths[task]
            term = terms[:, start : start + width]
            out[task] = term.squeeze(-1) if width == 1 else term
            start += width
        return out, fields, reads

    def forward(
        self, inputs: Mapping[str, Tensor], rows: Tensor | None = None
    ) -> dict[str, Tensor]:
        return self.terms_and_fields(inputs, rows)[0]
