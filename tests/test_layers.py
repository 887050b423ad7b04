"""altoflow's packages import one another one way only: the package graph has no cycle, and the
runtime never imports the server.

Every ``import`` in every module counts, at module level or inside a function (a deferred import
is still a dependency), and under ``TYPE_CHECKING`` too. Modules map to nodes of the graph:

- ``altoflow.<package>.*`` is the node ``altoflow.<package>`` (compiler, runtime, server, ops, lm,
  retrieval);
- each private module of the root (``altoflow._errors``, ``altoflow._result``,
  ``altoflow._stage``) is a node of its own: they are the small shared pieces (exceptions,
  events and results, the decorator) that the packages build on, and may use a package below
  them (``_stage`` reads ``ops``' aggregator protocol) as long as no cycle comes of it;
- the root's public modules (``altoflow/__init__.py``, ``cli.py``, ``client.py``) are the node
  ``altoflow``: the facade, the command line and the HTTP client, on top of everything, so no
  package may import them.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import networkx as nx

import altoflow

ROOT = Path(altoflow.__file__).resolve().parent
PACKAGES = {"compiler", "runtime", "server", "wire", "ops", "lm", "retrieval"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def node(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "altoflow"
    if parts[1] in PACKAGES:
        return f"altoflow.{parts[1]}"
    if parts[1].startswith("_") and parts[1] != "__main__":  # `python -m altoflow` is the CLI
        return f"altoflow.{parts[1]}"
    return "altoflow"


def is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").exists()


def imports(path: Path) -> list[tuple[str, int]]:
    """(module imported, line) for every import of an altoflow module in ``path``."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, ast.Import):
            out += [(alias.name, n.lineno) for alias in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                anchor = package.split(".")[: len(package.split(".")) - n.level + 1]
                base = ".".join(anchor + ([n.module] if n.module else []))
            # `from altoflow.runtime import frames` depends on altoflow.runtime.frames alone;
            # `from altoflow.runtime import Router` on the package altoflow.runtime.
            modules = [f"{base}.{alias.name}" for alias in n.names if is_module(f"{base}.{alias.name}")]
            if len(modules) < len(n.names):
                out.append((base, n.lineno))
            out += [(name, n.lineno) for name in modules]
    return [(name, line) for name, line in out if name.split(".")[0] == "altoflow"]


def package_graph() -> tuple[nx.DiGraph, dict[tuple[str, str], list[str]]]:
    graph = nx.DiGraph()
    why: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(ROOT.rglob("*.py")):
        src = node(module_name(path))
        graph.add_node(src)
        for target, line in imports(path):
            dst = node(target)
            if dst != src:
                graph.add_edge(src, dst)
                why[src, dst].append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
    return graph, why


def test_the_walk_sees_every_package_and_deferred_imports() -> None:
    graph, why = package_graph()
    assert {f"altoflow.{p}" for p in PACKAGES} <= set(graph)
    # cli.py imports the server inside its `serve` command only; the walk must still see it.
    assert any("altoflow/cli.py" in w for w in why["altoflow", "altoflow.server"])


def test_the_package_graph_has_no_cycle() -> None:
    graph, why = package_graph()
    cycles = list(nx.simple_cycles(graph))
    described = [" -> ".join([*cycle, cycle[0]]) + ": "
                 + "; ".join(why[a, b][0] for a, b in zip(cycle, [*cycle[1:], cycle[0]]))
                 for cycle in cycles]
    assert not cycles, "package import cycles:\n" + "\n".join(described)


def test_the_runtime_does_not_import_the_server() -> None:
    _, why = package_graph()
    assert not why["altoflow.runtime", "altoflow.server"], why["altoflow.runtime", "altoflow.server"]


def test_no_package_imports_the_facade() -> None:
    graph, why = package_graph()
    users = sorted(src for src in graph.predecessors("altoflow"))
    assert not users, [why[src, "altoflow"] for src in users]


def test_the_wire_is_below_the_runtime_and_the_server() -> None:
    _, why = package_graph()
    for upper in ("altoflow.runtime", "altoflow.server", "altoflow.compiler"):
        assert not why["altoflow.wire", upper], why["altoflow.wire", upper]
