"""The serving side must run without torch: the serving image carries no torch."""

from __future__ import annotations

import subprocess
import sys

BLOCK_TORCH = """
import importlib.abc, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, BlockTorch())
import serving, ranker.schema, ranker.features
import pkgutil, importlib
for module in pkgutil.walk_packages(serving.__path__, "serving."):
    importlib.import_module(module.name)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok")
"""


def test_serving_imports_without_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
