"""The import picture has three floors, read from the code (every import, also inside functions).

    cli                      composition root: wires training, serving and the simulator
    training | serving | sim side by side; training and serving never import each other,
                             serving never reaches torch, sim stands on ranker alone
    ranker                   the shared core: imports nothing above it

and no two modules import each other, directly or around a loop. Each rule is checked on the real
graph, and the checkers themselves on small hand-built graphs, so a rule cannot pass by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from tests.imports import ROOT, closure, imports, packages

# Package -> the project packages its modules may import. training may use the simulator (the
# `compare` grid trains on a simulated world); nothing but cli may wire serving and training.
ALLOWED = {
    "ranker": {"ranker"},
    "sim": {"ranker", "sim"},
    "serving": {"ranker", "serving"},
    "training": {"ranker", "sim", "training"},
    "cli": {"ranker", "sim", "training", "serving", "cli"},
}
Graph = Mapping[str, frozenset[str]]
# Cycles known and owned elsewhere, each exactly as found; any other cycle fails, and so does this
# list once its cycle is gone (so it only shrinks).
KNOWN_CYCLES: list[list[str]] = []


def _module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def project_graph() -> Graph:
    """Module -> the project modules it imports (a name resolves to its longest module prefix)."""
    files = {_module_name(p): p for pkg in packages() for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, frozenset[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imports(path, optional=None):
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in files:
                    targets.add(candidate)
                    break
        graph[module] = frozenset(targets - {module})
    return graph


def forbidden_arrows(graph: Graph, allowed: Mapping[str, set[str]]) -> list[str]:
    """'a.b -> c.d' for each import from one package into a package it may not use."""
    found = []
    for module, targets in sorted(graph.items()):
        top = module.split(".")[0]
        for target in sorted(targets):
            if target.split(".")[0] not in allowed.get(top, {top}):
                found.append(f"{module} -> {target}")
    return found


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


# -- the checkers, on hand-built graphs --------------------------------------------------------
def test_an_upward_or_sideways_arrow_is_reported() -> None:
    graph = {
        "ranker.a": frozenset({"training.t"}),
        "training.t": frozenset({"serving.s", "ranker.a"}),
        "serving.s": frozenset({"ranker.a"}),
        "sim.w": frozenset({"training.t"}),
        "cli.main": frozenset({"training.t", "serving.s", "sim.w"}),
    }
    assert forbidden_arrows(graph, ALLOWED) == [
        "ranker.a -> training.t",
        "sim.w -> training.t",
        "training.t -> serving.s",
    ]


def test_a_loop_of_any_length_is_a_cycle_and_a_chain_is_not() -> None:
    chain = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset()}
    assert cycles(chain) == []
    loop = {**chain, "c": frozenset({"a"}), "d": frozenset({"d", "a"})}
    assert cycles(loop) == [["a", "b", "c"]]
    pair = {"x": frozenset({"y"}), "y": frozenset({"x"})}
    assert cycles(pair) == [["x", "y"]]


# -- the project -------------------------------------------------------------------------------
def test_the_graph_covers_every_package() -> None:
    tops = {m.split(".")[0] for m in project_graph()}
    assert tops == set(ALLOWED), f"packages {sorted(tops)}, rules for {sorted(ALLOWED)}"
    # Imports inside functions count: the CLI imports its jobs lazily.
    assert "training.trainer" in project_graph()["cli.train"]


def test_every_import_goes_down_or_sideways_as_allowed() -> None:
    arrows = forbidden_arrows(project_graph(), ALLOWED)
    assert not arrows, "imports that break the floors:\n" + "\n".join(arrows)


def test_no_module_imports_itself_around_a_loop() -> None:
    found = cycles(project_graph())
    new = [c for c in found if c not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in new)
    gone = [c for c in KNOWN_CYCLES if c not in found]
    assert not gone, f"no longer cycles, remove them from KNOWN_CYCLES: {gone}"


def test_serving_never_reaches_torch() -> None:
    files, third_party = closure(sorted((ROOT / "serving").rglob("*.py")))
    assert "torch" not in third_party
    torch_side = sorted(
        str(p.relative_to(ROOT))
        for p in files
        if p.relative_to(ROOT).parts[:2] in (("ranker", "models"), ("ranker", "balancing"))
    )
    assert not torch_side, f"serving reaches torch-side ranker modules: {torch_side}"
