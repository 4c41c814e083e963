"""The project's imports and its declared dependencies, read from the code and pyproject.toml.

Shared by the dependency tests (every third-party import is declared by the install that runs it)
and the deployment tests (the serving image installs exactly the serving extra).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "ranker"


def norm(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split_requirement(line: str) -> tuple[str, list[str], str]:
    """'uvicorn[standard]>=0.30' -> ('uvicorn', ['standard'], '>=0.30'); the name normalised."""
    match = re.fullmatch(
        r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*([^;]*?)\s*(;.*)?", line
    )
    assert match, f"cannot parse requirement {line!r}"
    extras = [norm(e) for e in (match.group(2) or "").split(",") if e.strip()]
    return norm(match.group(1)), extras, match.group(3).replace(" ", "")


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared(*extras: str) -> dict[str, str]:
    """Distribution -> version spec installed by `pip install ranker[extras]` at first level.

    The core dependencies always; each extra's own lines, with self-references such as
    `ranker[serve-base]` expanded (pip resolves those to the same project's extras).
    """
    project = pyproject()["project"]
    optional = {norm(k): v for k, v in project.get("optional-dependencies", {}).items()}
    found: dict[str, str] = {}
    pending, seen = [norm(e) for e in extras], set()
    lines = list(project["dependencies"])
    while True:
        for line in lines:
            name, sub, spec = split_requirement(line)
            if name == PROJECT:
                pending += sub
            else:
                found[name] = spec
        lines = []
        while pending:
            extra = pending.pop()
            if extra not in seen:
                seen.add(extra)
                assert extra in optional, f"pyproject.toml has no extra {extra!r}"
                lines += optional[extra]
        if not lines:
            return found


def packages() -> list[str]:
    """The project's top-level packages, as `[tool.setuptools.packages.find]` includes them."""
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {pattern.rstrip("*").rstrip(".") for pattern in include}
    return sorted(t for t in tops if (ROOT / t / "__init__.py").is_file())


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(k, ast.Name) and k.id in _IMPORT_ERRORS for k in kinds)


def _guarded_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `try:` blocks that catch ImportError: optional dependencies."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            for statement in node.body:
                guarded |= {id(n) for n in ast.walk(statement)}
    return guarded


def imports(path: Path, *, optional: bool | None = False) -> set[str]:
    """Absolute names of the modules imported anywhere in the file (also inside functions).

    optional=False: the required imports; True: only those inside a `try: ... except
    ImportError` (an optional extra provides them); None: both.
    """
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    guarded = _guarded_nodes(tree)
    for node in ast.walk(tree):
        if optional is not None and (id(node) in guarded) != optional:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            # `from pkg import sub` may name a submodule.
            names |= {f"{module}.{alias.name}" for alias in node.names if alias.name != "*"}
    return names


def is_third_party(top: str) -> bool:
    return bool(top) and top not in sys.stdlib_module_names and top != "__future__"


def closure(start: list[Path]) -> tuple[frozenset[Path], frozenset[str]]:
    """Project files reachable from `start` through imports, and the third-party modules they import.

    A module pulls in the packages above it (their __init__ runs too).
    """
    first_party = set(packages())
    queue = list(start)
    seen: set[Path] = set()
    third_party: set[str] = set()
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports(path):
            top = name.split(".")[0]
            if top in first_party:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    found = module_file(".".join(parts[:i]))
                    if found is not None and found not in seen:
                        queue.append(found)
            elif is_third_party(top):
                third_party.add(top)
    return frozenset(seen), frozenset(third_party)


@cache
def _packages_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


def distribution(module: str) -> str:
    """The installed distribution that provides top-level module `module`."""
    found = _packages_distributions().get(module)
    assert found, f"{module!r} is imported, but no installed distribution provides it"
    # onnxruntime and onnxruntime-gpu both provide `onnxruntime`: the CPU one is the declared one.
    names = sorted({norm(n) for n in found}, key=len)
    return names[0]
