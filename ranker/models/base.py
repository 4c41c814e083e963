"""What every multi-task architecture shares: config fields, input layer, towers, outputs, groups.

An architecture subclasses `MultiTaskModel` and implements `body` (input vectors -> per-task tower
inputs + shared representation + gates) and `shared_parameters`. The model is the inference module:
`forward` returns natural-unit predictions and exports to ONNX; training-only parts (losses,
auxiliary heads) live in `ranker.models.training`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from ranker.models.calibration import OutputCalibration
from ranker.models.factors import TaskFactors
from ranker.models.inputs import InputLayer, TableRead
from ranker.models.losses import task_output
from ranker.models.towers import TaskTowers
from ranker.registry import REQUEST_INDEX as REQUEST_INDEX
from ranker.schema import FeatureSpec
from ranker.tasks import Task

# REQUEST_INDEX, the batched graph's extra input (named in ranker.registry, which serving reads
# without torch): for each item row, the row of its request in the user inputs ([N] int64).
# Without it the user inputs have batch 1 (one request) or N (row-wise).


# Integer fields that may be 0 (off); every other integer is a size >= 1.
_INT_MINIMUM = {"factor_rank": 0}


@dataclass(frozen=True)
class ModelConfig:
    """Fields every architecture has. Sequences are stored as tuples, feeds as (target, source) pairs."""

    # Width of every categorical and multi-categorical embedding.
    embedding_dim: int = 16
    # Hidden layers of each task tower; () makes the tower a single linear output.
    tower_units: tuple[int, ...] = (64,)
    # Dropout after every hidden ReLU (experts / bottom and towers); active in training only.
    dropout: float = 0.0
    # target task -> source task: the target's tower also reads the source's detached raw output.
    # A mapping is accepted and stored as pairs; the source must come earlier in task order.
    feeds: tuple[tuple[str, str], ...] = ()
    # Rank of each task's own user x item bilinear term added to its raw outputs
    # (`ranker.models.factors`); 0: none.
    factor_rank: int = 0
    # Tasks that get the factor terms; empty: every task.
    factor_tasks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Types come from the annotations (strings under `from __future__ import annotations`):
        # ints are sizes (>= 1), floats are probabilities ([0, 1)), int tuples are layer widths.
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            ftype = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            ftype = str(f.type) if ftype == "tuple" else ftype
            if name == "feeds":
                pairs = list(value.items() if isinstance(value, Mapping) else value)
                value = tuple((str(t), str(s)) for t, s in pairs)
                targets = [t for t, _ in value]
                if len(set(targets)) != len(targets):
                    raise ValueError(f"feeds: a task can be fed by one source only, got {value}")
            elif ftype == "int":
                least = _INT_MINIMUM.get(name, 1)
                if isinstance(value, bool) or not isinstance(value, int) or value < least:
                    raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
            elif ftype == "float":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
                value = float(value)
                if not 0.0 <= value < 1.0:
                    raise ValueError(f"{name} must be in [0, 1), got {value}")
            elif ftype.startswith("tuple[str"):
                value = (value,) if isinstance(value, str) else tuple(value)
                if not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{name} must be a list of names, got {value}")
            elif ftype.startswith("tuple[int"):
                value = tuple(value)
                if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                    raise ValueError(f"{name} must be a list of positive integers, got {value}")
                if not value and name != "tower_units":
                    raise ValueError(f"{name} needs at least one layer")
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain form (lists, a feeds mapping) that `build_model` accepts back."""
        out = asdict(self)
        out["feeds"] = dict(self.feeds)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


class ModelParts(NamedTuple):
    """Everything a forward pass computes that training needs."""

    # task -> [N] raw (pre-activation) output, what the task's loss compares.
    raw: dict[str, Tensor]
    # task -> [N, d_t] exact input of the task's tower (feed columns included).
    tower_inputs: dict[str, Tensor]
    # Shared representation tensor(s) every task reads, for cheap-mode (MGDA-UB) Gramians.
    shared: tuple[Tensor, ...]
    # gate name -> [N, E] mixture weights (empty for SharedBottom), for utilisation logging.
    gates: dict[str, Tensor]
    # The factor terms' field vectors, user and item side (empty without factor terms), for L2.
    factor_fields: tuple[Tensor, ...] = ()
    # The input layer's (user, item) vectors before any request gather, for the read L2.
    embedded: tuple[Tensor, ...] = ()
    # Every embedding-table read of the pass (input layer, then factor terms), for the per-id L2.
    reads: tuple[TableRead, ...] = ()


class Body(NamedTuple):
    """What an architecture computes between the input layer and the towers."""

    tower_inputs: list[Tensor]  # per task [N, d], task order, before feed columns
    shared: tuple[Tensor, ...]
    gates: dict[str, Tensor]


class MultiTaskModel(nn.Module):
    """Base inference module: inputs dict -> {task: prediction [N]} in task order."""

    kind: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, spec: FeatureSpec, tasks: Sequence[Task], config: ModelConfig) -> None:
        super().__init__()
        self.spec = spec
        self.tasks = tuple(tasks)
        self.task_names = tuple(t.name for t in self.tasks)
        self.config = config
        _check_feeds(dict(config.feeds), self.task_names)
        self.inputs = InputLayer(spec, config.embedding_dim)
        self.input_names = self.inputs.input_names
        factor_tasks = config.factor_tasks or self.task_names
        unknown = sorted(set(factor_tasks) - set(self.task_names))
        if unknown:
            raise ValueError(f"factor_tasks: unknown tasks {unknown}; tasks: {self.task_names}")
        self.factors = (
            TaskFactors(
                spec,
                [t for t in self.task_names if t in factor_tasks],
                {t.name: t.raw_width for t in self.tasks},
                config.factor_rank,
            )
            if config.factor_rank
            else None
        )
        # Calibration under drift, set after training (training/calibration.py); none: identity.
        self.calibration = OutputCalibration()

    def _make_towers(self, in_dim: int) -> None:
        c = self.config
        widths = {t.name: t.raw_width for t in self.tasks}
        self.towers = TaskTowers(
            self.task_names, in_dim, c.tower_units, c.dropout, dict(c.feeds), widths
        )

    def body(self, user: Tensor, item: Tensor) -> Body:
        """user [B_u, d_user] (B_u in {1, N}), item [N, d_item] -> Body."""
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        """Dense parameters more than one task's loss depends on (experts / bottom; never the
        embedding tables): where per-task gradients are taken for gradient-based balancers."""
        raise NotImplementedError

    def forward_parts(self, inputs: Mapping[str, Tensor]) -> ModelParts:
        user, item, reads = self.inputs.forward_read(inputs)
        embedded = (user, item)
        rows = inputs.get(REQUEST_INDEX)
        if rows is not None:
            # A batch of requests: user [B, d_user] -> each candidate's own user row [N, d_user].
            # Gathering after the input layer keeps the embedding lookups once per request; the
            # user part of the first dense layer then runs per row (row-wise mode), the price of
            # one graph for any architecture (docs/serving.md: batched graph).
            user = user.index_select(0, rows)
        body = self.body(user, item)
        offsets: dict[str, Tensor] | None = None
        fields: tuple[Tensor, ...] = ()
        if self.factors is not None:
            offsets, fields, factor_reads = self.factors.terms_and_fields(inputs, rows)
            reads += factor_reads
        raw, tower_inputs = self.towers(body.tower_inputs, offsets)
        return ModelParts(raw, tower_inputs, body.shared, body.gates, fields, embedded, reads)

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{task: [N] prediction in natural units}: click probability, watch_time seconds >= 0,
        completion in [0, 1]; keys in task order."""
        return self.predictions(self.forward_parts(inputs).raw)

    def predictions(self, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Raw outputs -> natural-unit predictions, calibrated: what `forward` returns."""
        return self.calibration({t.name: task_output(t, raw[t.name]) for t in self.tasks})

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters only `task` owns in this module: its tower."""
        return list(self.towers.towers[task].parameters())

    def param_groups(
        self, lr: float, task_lr: Mapping[str, float] | None = None
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: `shared` (embeddings and factor tables, experts / bottom,
        gates) at `lr`, then one group per task (its tower) at `task_lr[task]`, default `lr`.
        Every parameter appears once."""
        task_lr = dict(task_lr or {})
        unknown = sorted(set(task_lr) - set(self.task_names))
        if unknown:
            raise ValueError(f"task_lr for unknown tasks {unknown}; tasks: {list(self.task_names)}")
        groups = [
            {"name": t, "params": self.task_parameters(t), "lr": task_lr.get(t, lr)}
            for t in self.task_names
        ]
        owned = {id(p) for t in self.task_names for p in self.task_parameters(t)}
        shared = [p for p in self.parameters() if id(p) not in owned]
        return [{"name": "shared", "params": shared, "lr": lr}, *groups]

    def hparams(self) -> dict[str, Any]:
        """What rebuilds this model with `build_model` (with the spec, stored next to it)."""
        return {
            "kind": self.kind,
            "tasks": [t.to_dict() for t in self.tasks],
            "config": self.config.to_dict(),
        }


def _check_feeds(feeds: Mapping[str, str], tasks: Sequence[str]) -> None:
    for target, source in feeds.items():
        if target not in tasks or source not in tasks:
            raise ValueError(f"feed {target!r} <- {source!r}: unknown task; tasks: {list(tasks)}")
        if tasks.index(source) >= tasks.index(target):
            raise ValueError(
                f"feed {target!r} <- {source!r}: the source must come before the target in task "
                f"order {list(tasks)}"
            )
