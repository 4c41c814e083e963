"""Embedding tables sized to the data: low-cardinality features never share a row, ids get headroom,
and the shipped simulator spec is the sizing of the default simulator world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ranker.features import FeatureEncoder, category_hashes, hash_categorical
from ranker.schema import Feature, load_default_spec
from ranker.table_sizing import ID_HEADROOM, LOW_CARDINALITY, CardinalityCounter, size_buckets
from sim.simulate import SimulatorConfig, spec_sizing
from training.data import read_log


def _sizing(values: list[object] | np.ndarray, name: str = "f") -> tuple[int, int]:
    counter = CardinalityCounter({name: Feature(name, "user", "categorical", buckets=2)})
    counter.add(name, pa.array(values))
    sized = counter.sizing()[name]
    return sized.buckets, sized.cardinality


@pytest.mark.parametrize(
    "values",
    [
        list(range(24)),
        [f"tab_{i}" for i in range(15)],
        list(range(0, 5000, 7))[: LOW_CARDINALITY - 1],
    ],
)
def test_low_cardinality_values_each_get_their_own_row(values: list[object]) -> None:
    buckets, cardinality = _sizing(values * 3)  # repeats count once
    assert cardinality == len(values) + 1  # + the missing-value default
    assert buckets >= 4 * cardinality
    rows = hash_categorical(np.asarray(values), buckets, "f")
    assert len(np.unique(rows)) == len(values)
    missing = hash_categorical(np.array([None, *values], dtype=object), buckets, "f")
    assert missing[0] not in rows  # a missing value has its own row too


def test_high_cardinality_ids_get_power_of_two_headroom() -> None:
    ids = np.arange(1000, 6000)
    buckets, cardinality = _sizing(ids)
    assert cardinality == 5001 and buckets == 32768  # >= 4x 5001, a power of two
    assert buckets >= ID_HEADROOM * cardinality and buckets & (buckets - 1) == 0
    assert size_buckets(np.unique(category_hashes(ids, "f"))).buckets == 32768


def test_counter_ignores_chunking_and_flattens_lists() -> None:
    feature = Feature("tags", "item", "multi_categorical", buckets=2, max_len=3)
    whole = CardinalityCounter({"tags": feature})
    whole.add("tags", pa.array([[1, 2], [2, 3], None, [], [9]]))
    parts = CardinalityCounter({"tags": feature})
    parts.add("tags", pa.array([[1, 2]]))
    parts.add("tags", pa.chunked_array([pa.array([[2, 3], None]), pa.array([[], [9]])]))
    assert whole.sizing() == parts.sizing()
    assert whole.sizing()["tags"].cardinality == 5  # 1, 2, 3, 9 + the default


def test_shipped_simulator_spec_is_the_sizing_of_the_default_world() -> None:
    spec = load_default_spec()
    sizing = spec_sizing(SimulatorConfig())
    categorical = [f for f in spec.features if f.kind != "dense"]
    assert {f.name: f.buckets for f in categorical} == {n: s.buckets for n, s in sizing.items()}


def test_simulated_log_low_cardinality_features_never_collide(tiny_log: Path) -> None:
    spec = load_default_spec()
    log = read_log(tiny_log, spec)
    encoded = FeatureEncoder(spec).encode({name: log.table[name] for name in spec.names}, log.rows)
    checked = 0
    for group in ("user", "item"):
        for j, feature in enumerate(spec.select(group, "categorical")):
            values = np.unique(log.table[feature.name].to_numpy(zero_copy_only=False))
            if len(values) > LOW_CARDINALITY:
                continue
            rows = np.unique(encoded[f"{group}_cat"][:, j])
            assert len(rows) == len(values), f"{feature.name}: values share rows"
            checked += 1
    assert checked >= 8  # hour, tab, category, device, degree, followers, the user codes
