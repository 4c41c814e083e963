"""Every module imported at run time is a declared dependency of the install that runs it.

Three installs (pyproject.toml): the core (the torch-free library), `ranker[serve]` (the online
service, no torch) and `ranker[train]` (everything: training, the demo, the CLI). A few torch-free
ranker modules are shared by several packages and need an extra (CORE_WITH_EXTRA): no other core
module may import them, so `pip install ranker` keeps its four dependencies. A third-party
import that arrives only by accident (starlette through fastapi, httpx through a dev tool) fails
here, and so does a serving install that would resolve torch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.imports import (
    ROOT,
    closure,
    declared,
    distribution,
    imports,
    is_third_party,
    norm,
    packages,
    pyproject,
)

# What the serving install must never carry: torch and what only training needs.
TRAINING_ONLY = {"torch", "onnx", "onnxscript", "optuna", "matplotlib", "tqdm"}
# Declared but never imported by the project, each for a reason.
NOT_IMPORTED = {
    "onnxscript": "torch.onnx's dynamo exporter imports it when `ranker export` runs",
}


# Torch-free ranker modules that need an extra: path -> (extra, why they live in ranker/). The core
# install never reaches them (the core test proves no other core module imports them).
CORE_WITH_EXTRA = {
    "ranker/experiment_store.py": ("serve", "Redis store: written by retraining, read by serving"),
    "ranker/onnx_model.py": ("serve", "the one verified ONNX session of serving, tuning, export"),
    "ranker/progress.py": ("train", "progress bars (tqdm) of training and the simulator"),
}


def _all_files() -> list:
    return sorted(p for pkg in packages() for p in (ROOT / pkg).rglob("*.py"))


def _torch_free_core() -> list:
    torch_side = (ROOT / "ranker" / "models", ROOT / "ranker" / "balancing")
    return sorted(
        p
        for p in (ROOT / "ranker").rglob("*.py")
        if not any(p.is_relative_to(t) for t in torch_side)
        and str(p.relative_to(ROOT)) not in CORE_WITH_EXTRA
    )


def _undeclared(files: list, *extras: str) -> dict[str, str]:
    """Third-party distributions imported from `files` (and what they import) but not declared."""
    _, modules = closure(files)
    allowed = set(declared(*extras))
    return {m: distribution(m) for m in sorted(modules) if distribution(m) not in allowed}


def test_the_torch_free_core_imports_only_core_dependencies() -> None:
    missing = _undeclared(_torch_free_core())
    assert not missing, f"the core dependencies in pyproject.toml miss {missing}"


@pytest.mark.parametrize("name", sorted(CORE_WITH_EXTRA))
def test_core_modules_with_an_extra_import_only_what_it_declares(name: str) -> None:
    extra, _ = CORE_WITH_EXTRA[name]
    assert (ROOT / name).is_file(), name
    _, modules = closure([ROOT / name])
    if extra == "serve":
        assert not modules & TRAINING_ONLY, f"{name} imports {sorted(modules & TRAINING_ONLY)}"
    missing = _undeclared([ROOT / name], extra)
    assert not missing, f"the {extra} extra in pyproject.toml misses {missing}"


def test_serving_imports_only_what_the_serve_extra_declares() -> None:
    files, modules = closure(sorted((ROOT / "serving").rglob("*.py")))
    assert not modules & TRAINING_ONLY, f"serving imports {sorted(modules & TRAINING_ONLY)}"
    torch_side = sorted(
        str(p.relative_to(ROOT))
        for p in files
        if p.relative_to(ROOT).parts[:2] in (("ranker", "models"), ("ranker", "balancing"))
    )
    assert not torch_side, f"serving reaches torch-side ranker modules: {torch_side}"
    missing = _undeclared(sorted((ROOT / "serving").rglob("*.py")), "serve")
    assert not missing, f"the serve extra in pyproject.toml misses {missing}"


def test_every_package_imports_only_what_the_train_extra_declares() -> None:
    missing = _undeclared(_all_files(), "train")
    assert not missing, f"the train extra in pyproject.toml misses {missing}"


def test_every_declared_dependency_is_imported_or_has_a_reason() -> None:
    imported = {
        distribution(name.split(".")[0])
        for path in _all_files()
        for name in imports(path, optional=None)
        if is_third_party(name.split(".")[0]) and name.split(".")[0] not in packages()
    }
    unused = set(declared("train")) - imported - set(NOT_IMPORTED)
    assert not unused, f"pyproject.toml declares {sorted(unused)}, which nothing imports"


def test_optional_imports_are_declared_by_an_extra() -> None:
    """An import guarded by `except ImportError` is an optional feature: some extra brings it."""
    extras = pyproject()["project"]["optional-dependencies"]
    offered = {name for extra in extras for name in declared(extra)}
    for path in _all_files():
        for name in imports(path, optional=True):
            top = name.split(".")[0]
            if not is_third_party(top) or top in packages():
                continue
            try:
                dist = distribution(top)
            except AssertionError:  # not installed here: the module's name is the best guess
                dist = norm(top)
            assert dist in offered, (
                f"{path.relative_to(ROOT)} imports {top} optionally, but no extra declares {dist}"
            )


def test_the_gpu_extra_swaps_onnxruntime_instead_of_adding_a_second_one() -> None:
    serve, gpu = declared("serve"), declared("gpu")
    assert "onnxruntime" in serve and "onnxruntime-gpu" not in serve
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert set(serve) - {"onnxruntime"} == set(gpu) - {"onnxruntime-gpu"}


def test_the_resolved_serving_install_has_no_torch(tmp_path) -> None:
    """pip's own resolver, against the package index, on `ranker[serve]`: no hand-kept list."""
    report = tmp_path / "report.json"
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    done = subprocess.run(
        [*pip, "--report", str(report), f"{ROOT}[serve]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"pip could not resolve ranker[serve]:\n{done.stderr[-2000:]}"
    resolved = {
        item["metadata"]["name"].lower().replace("_", "-")
        for item in json.loads(report.read_text())["install"]
    }
    assert {"onnxruntime", "fastapi", "uvicorn", "redis", "numpy"} <= resolved, resolved
    assert not resolved & TRAINING_ONLY, (
        f"ranker[serve] resolves {sorted(resolved & TRAINING_ONLY)}"
    )


@pytest.mark.parametrize("extra", ["serve", "gpu", "train"])
def test_extras_resolve_their_self_references(extra: str) -> None:
    assert {"numpy", "pyarrow"} <= set(declared(extra))
