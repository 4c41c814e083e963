"""Shared fixtures: a small fitted spec covering every kind in both groups, and encoded inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor

from ranker.schema import DenseStats, Feature, FeatureSpec, spec_of

MakeInputs = Callable[..., dict[str, Tensor]]


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # Tiny models: a second intra-op thread only adds synchronisation (10x slower on a busy
    # 2-core machine).
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def spec() -> FeatureSpec:
    raw = spec_of(
        [
            Feature("user_id", "user", "categorical", buckets=100),
            Feature("device", "user", "categorical", buckets=8),
            Feature("user_tags", "user", "multi_categorical", buckets=20, max_len=3),
            Feature("activity", "user", "dense", transform="log1p"),
            Feature("hour", "context", "categorical", buckets=24),
            Feature("item_id", "item", "categorical", buckets=200),
            Feature("tags", "item", "multi_categorical", buckets=50, max_len=4),
            Feature("topics", "item", "multi_categorical", buckets=30, max_len=2),
            Feature("duration", "item", "dense", transform="log1p", default=30.0),
            Feature("age", "item", "dense", transform="log1p"),
        ],
        name="test",
    )
    return raw.with_stats(
        {
            "activity": DenseStats(1.0, 0.5),
            "duration": DenseStats(3.0, 1.2),
            "age": DenseStats(2.0, 2.0),
        }
    )


def _encode(spec: FeatureSpec, group: str, rows: int, gen: torch.Generator) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    cats = spec.select(group, "categorical")
    if cats:
        out[f"{group}_cat"] = torch.stack(
            [torch.randint(0, f.buckets, (rows,), generator=gen) for f in cats], dim=1
        )
    multis = spec.select(group, "multi_categorical")
    if multis:
        cols = []
        for f in multis:
            ids = torch.randint(1, f.buckets + 1, (rows, f.max_len), generator=gen)
            length = torch.randint(0, f.max_len + 1, (rows, 1), generator=gen)
            cols.append(ids * (torch.arange(f.max_len) < length))  # trailing padding, some empty
        out[f"{group}_multi"] = torch.cat(cols, dim=1)
    denses = spec.select(group, "dense")
    if denses:
        out[f"{group}_dense"] = 3.0 * torch.rand(rows, len(denses), generator=gen)
    return out


@pytest.fixture
def make_inputs() -> MakeInputs:
    """make_inputs(spec, user_rows, item_rows, seed=0) -> encoded inputs like ranker.features."""

    def make(spec: FeatureSpec, user_rows: int, item_rows: int, seed: int = 0) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return {**_encode(spec, "user", user_rows, gen), **_encode(spec, "item", item_rows, gen)}

    return make
