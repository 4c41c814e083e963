"""A static scan for unsafe deserialisation and code execution: reads Python files with `ast`
(never imports them) and reports every call or import that can run code from data.

Flagged: any import of pickle, cPickle, _pickle, dill, cloudpickle, shelve, jsonpickle or marshal;
pickle-backed loaders (joblib.load, pandas.read_pickle, torch.load without weights_only=True,
numpy.load with allow_pickle=True); yaml.load / load_all without a Safe loader, yaml.unsafe_load
and yaml.full_load; eval, exec and compile. Names are resolved through `import x as y` and
`from x import y as z`, so `np.load` and `from yaml import load` are caught too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PICKLE_MODULES = frozenset(
    {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "jsonpickle", "marshal"}
)
ALWAYS = frozenset(
    {
        "joblib.load",
        "pandas.read_pickle",
        "yaml.unsafe_load",
        "yaml.unsafe_load_all",
        "yaml.full_load",
        "yaml.full_load_all",
        "builtins.eval",
        "builtins.exec",
        "builtins.compile",
    }
)
SAFE_YAML_LOADERS = frozenset({"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"})


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.aliases: dict[str, str] = {}  # local name -> dotted origin
        self.findings: list[Finding] = []

    def _flag(self, node: ast.AST, what: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), what))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.aliases[alias.asname or alias.name.split(".")[0]] = (
                alias.name if alias.asname else alias.name.split(".")[0]
            )
            if alias.name.split(".")[0] in PICKLE_MODULES:
                self._flag(node, f"import {alias.name}")
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        if module.split(".")[0] in PICKLE_MODULES:
            self._flag(node, f"from {module} import ...")
        self.generic_visit(node)

    def _dotted(self, node: ast.expr) -> str | None:
        """`np.load` -> `numpy.load` through the import aliases; bare builtins -> builtins.x."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        head = self.aliases.get(node.id)
        if head is None:
            head = f"builtins.{node.id}" if not parts else node.id
        return ".".join([head, *reversed(parts)])

    def visit_Call(self, node: ast.Call) -> None:
        name = self._dotted(node.func)
        if name is not None:
            self._check_call(node, name)
        self.generic_visit(node)

    def _check_call(self, node: ast.Call, name: str) -> None:
        keywords = {k.arg: k.value for k in node.keywords if k.arg is not None}
        if name in ALWAYS or name.split(".")[0] in PICKLE_MODULES:
            self._flag(node, f"{name}(...)")
        elif name == "torch.load" and not _is_true(keywords.get("weights_only")):
            self._flag(node, "torch.load(...) without weights_only=True")
        elif name == "numpy.load" and not _is_false_or_absent(keywords.get("allow_pickle")):
            self._flag(node, "numpy.load(...) with allow_pickle")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            loader_name = self._dotted(loader) if isinstance(loader, ast.expr) else None
            if loader_name is None or loader_name.split(".")[-1] not in SAFE_YAML_LOADERS:
                self._flag(node, f"{name}(...) without a safe Loader")


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _is_false_or_absent(node: ast.expr | None) -> bool:
    return node is None or (isinstance(node, ast.Constant) and node.value is False)


def scan_source(source: str, path: Path = Path("<string>")) -> list[Finding]:
    scanner = _Scanner(path)
    scanner.visit(ast.parse(source, filename=str(path)))
    return scanner.findings


def python_files(roots: Iterable[Path]) -> Iterator[Path]:
    for root in roots:
        yield from sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def scan(roots: Iterable[Path]) -> tuple[list[Finding], int]:
    """Findings over every .py file under `roots`, and how many files were read."""
    findings: list[Finding] = []
    count = 0
    for path in python_files(roots):
        findings += scan_source(path.read_text(encoding="utf-8"), path)
        count += 1
    return findings, count
