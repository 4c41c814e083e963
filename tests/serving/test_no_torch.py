"""The serving side must run without torch: the serving image carries no torch."""

from __future__ import annotations

from tests.conftest import assert_runs_without_torch

IMPORT_EVERY_SERVING_MODULE = """
import importlib, pkgutil
import serving, ranker.schema, ranker.features
for module in pkgutil.walk_packages(serving.__path__, "serving."):
    importlib.import_module(module.name)
"""


def test_serving_imports_without_torch() -> None:
    assert_runs_without_torch(IMPORT_EVERY_SERVING_MODULE)
