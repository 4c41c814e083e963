"""A/B buckets: pinned values (a change of hash re-assigns every user), balance, independence."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xxhash

from ranker.bucketing import bucket_of, user_key

# Chi-square critical value, 99 degrees of freedom, p = 0.001.
CHI2_99_P001 = 148.23


def test_bucket_values_are_pinned() -> None:
    # If this fails, the hash changed: every running experiment would silently re-shuffle users.
    pinned = {
        0: (630, 950, 435),
        1: (356, 180, 757),
        42: (603, 686, 995),
        "alice": (780, 940, 269),
        "user-123456": (487, 198, 405),
        2**40: (354, 426, 435),
    }
    for user, (models, weights, other_salt) in pinned.items():
        assert bucket_of("salt-a", "models", user, 1000) == models, user
        assert bucket_of("salt-a", "weights", user, 1000) == weights, user
        assert bucket_of("salt-b", "models", user, 1000) == other_salt, user
    assert xxhash.xxh3_64_intdigest(b"salt-a:models:42") == 1832854805307820603


def test_integer_and_text_ids_are_one_user() -> None:
    assert bucket_of("s", "l", 42, 100) == bucket_of("s", "l", "42", 100)
    assert user_key(7) == "7"
    with pytest.raises(TypeError):
        user_key(True)


def test_stable_across_processes() -> None:
    # Python's hash() is salted per process; ours must not be.
    code = "from ranker.bucketing import bucket_of; print([bucket_of('s', 'l', u, 997) for u in range(50)])"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == str([bucket_of("s", "l", u, 997) for u in range(50)])


def test_buckets_are_balanced() -> None:
    counts = np.bincount(
        [bucket_of("balance", "layer", u, 100) for u in range(100_000)], minlength=100
    )
    expected = 1000.0
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_99_P001, chi2
    text_counts = np.bincount(
        [bucket_of("balance", "layer", f"user-{u}", 100) for u in range(100_000)], minlength=100
    )
    assert float(((text_counts - expected) ** 2 / expected).sum()) < CHI2_99_P001


def test_layers_are_independent() -> None:
    # Joint 10 x 10 table of two layers' buckets: chi-square test of independence (81 dof).
    users = range(50_000)
    a = np.array([bucket_of("ind", "models", u, 10) for u in users])
    b = np.array([bucket_of("ind", "weights", u, 10) for u in users])
    table = np.zeros((10, 10))
    np.add.at(table, (a, b), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    assert chi2 < 125.0, chi2  # chi-square 81 dof, p = 0.001 is about 124.8
