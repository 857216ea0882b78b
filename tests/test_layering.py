"""The package's modules form layers with no import cycle, not even through function-level imports.

The graph is read from the source (AST), so an import inside a function counts like one at the top:
a cycle hidden in a function still ties the two modules together. `docs/architecture.md` names the
layers; a module may import its own layer or a lower one, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "include" / "consent_gate"

# Bottom to top. A module imports from its own layer or below.
LAYERS: dict[str, tuple[str, ...]] = {
    # The domain's words: records, keyed ids, consent (and the consent store it is read from).
    "core": (
        "__init__", "records", "keys", "speakers", "webvtt_reader", "consent_store", "consent",
        "consent_vector", "layout", "errors", "artifacts", "instants",
    ),
    # Where things are read and written: the landing zone, the output store, settings.
    "io": ("storage", "stores", "sources", "publish", "config", "runs", "parquet", "manifest_schema"),
    # Rules applied to records: the gate, k-anonymity, keyed consent, re-verification, reports.
    "rules": (
        "gate", "telemetry", "aggregates", "keyed_consent", "consent_ledger", "sweep_scope", "verify", "audit",
        "explain",
    ),
    # The day's steps over a stage, its checks and its manifest.
    "steps": ("steps", "checks", "manifest", "validation", "gx_reports", "gx_views", "unpublished"),
    # Transactions over published data: publication, the whole day, the revocation sweep.
    "orchestration": ("publication", "pipeline", "processes", "sweep"),
    # Entry points: Airflow task bodies and callbacks, the command line, the auditor view, tooling.
    "edges": (
        "airflow_tasks", "airflow_local", "cli", "auditor_pages", "auditor_app", "alerts", "assets", "lineage",
        "consumer", "sample",
    ),
}  # fmt: skip


def imports_of(source: str, modules: set[str], own: str) -> set[str]:
    """The package modules `source` imports, at any depth (inside functions and TYPE_CHECKING blocks too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "consent_gate":
                found.update(alias.name for alias in node.names if alias.name in modules)
            elif node.module.startswith("consent_gate."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("consent_gate."))
    return found - {own}


def package_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = {path.stem for path in package.glob("*.py")}
    return {path.stem: imports_of(path.read_text(), modules, path.stem) for path in package.glob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (its modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once every import below it is checked
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return [*path[path.index(imported) :], imported]
            if imported not in state and (cycle := visit(imported)) is not None:
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)) is not None:
            return cycle
    return None


def upward_imports(graph: dict[str, set[str]], layers: dict[str, tuple[str, ...]]) -> list[str]:
    """Every import of a module from a higher layer, as 'low (layer) -> high (layer)'."""
    rank = {module: (i, name) for i, (name, members) in enumerate(layers.items()) for module in members}
    return sorted(
        f"{module} ({rank[module][1]}) -> {imported} ({rank[imported][1]})"
        for module, imported_set in graph.items()
        for imported in imported_set
        if rank[imported][0] > rank[module][0]
    )


def test_every_module_has_a_layer_and_no_layer_names_a_missing_module():
    declared = [module for members in LAYERS.values() for module in members]
    assert len(declared) == len(set(declared)), "a module is declared in two layers"
    assert set(declared) == set(package_graph()), "declare each module of include/consent_gate in LAYERS"


def test_the_package_has_no_import_cycle():
    assert find_cycle(package_graph()) is None


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports(package_graph(), LAYERS) == []


def test_the_checks_report_a_cycle_and_an_upward_import():
    source = "from consent_gate.b import x\n\ndef later():\n    from consent_gate import c\n"
    assert imports_of(source, {"a", "b", "c"}, "a") == {"b", "c"}  # the function-level import counts
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    layers = {"low": ("a", "d"), "high": ("b", "c")}
    assert upward_imports({"a": {"b"}, "b": {"a"}, "c": set(), "d": set()}, layers) == ["a (low) -> b (high)"]
