"""Every benchmark script imports: a module moved by a refactor must not leave a script behind
that fails only when someone runs `make bench` (benchmarks are not run in CI)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for p in (ROOT / "benchmarks").rglob("*.py")
    if p.name != "__init__.py"
)


def test_there_are_benchmarks() -> None:
    assert "benchmarks.serving_rank" in SCRIPTS and "benchmarks.gpu" in SCRIPTS


@pytest.mark.parametrize("module", SCRIPTS)
def test_benchmark_imports(module: str) -> None:
    importlib.import_module(module)
