"""The layout holds (docs/architecture.md).

- The import graph of the relay package, read from the source (every
  import: at module level, under ``TYPE_CHECKING``, inside a function), has
  no cycle, and each layer imports only from itself and the layers below it.
- Imports inside functions are the few the architecture names, each with
  its reason where it is: the store engines, the CLI commands' machinery,
  PyJWT.
- The core is pure: each ``relay.core`` module is imported alone in a fresh
  interpreter, and none may bring in an event loop, a socket or a database.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import relay.core

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "relay"

# Each layer may import from these layers (itself included). The client
# stands beside the server: the tools share the core with the daemon and
# nothing else. ``relay`` is the package itself and ``python -m relay``.
BELOW = {
    "core": {"core"},
    "config": {"core", "config"},
    "store": {"core", "config", "store"},
    "net": {"core", "config", "store", "net"},
    "fanout": {"core", "config", "store", "net", "fanout"},
    # Outbound webhooks stand beside the fan-out: both deliver what the
    # store commits, neither knows the other.
    "outbound": {"core", "config", "store", "net", "outbound"},
    "server": {"core", "config", "store", "net", "fanout", "outbound", "server"},
    "client": {"core", "client"},
    "cli": {"core", "config", "store", "net", "fanout", "outbound", "server", "client", "cli"},
    "relay": {"cli", "relay"},
}
# (module, function) pairs that import inside a function, and why.
LAZY = {
    ("relay.store", "open_store"),  # only the configured engine loads (coredis, sqlite3)
    ("relay.core.grants", "_pyjwt"),  # PyJWT's package loads socket and ssl
    ("relay.cli.serve", "run"),  # the CLI loads trio and the daemon only for the command that needs them
    ("relay.cli.tail", "run"),
    ("relay.cli.forward", "run"),
    ("relay.cli.send", "run"),
    ("relay.cli.publish", "run"),
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, str | None]]:
    """What ``name`` imports, each with the function it is imported in
    (None: at module level, ``TYPE_CHECKING`` included): the relay modules,
    and as ``""`` a library imported inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = function or node.name
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "relay":
                    found.append((alias.name, function))
                elif function is not None:
                    found.append(("", function))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] == "relay":
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    found.append((sub if sub in known else source, function))
            elif function is not None:
                found.append(("", function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text()), None)
    return found


def graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """Edges between relay modules, and the (module, function) pairs that import inside a function."""
    found = modules()
    edges: dict[str, set[str]] = {name: set() for name in found}
    lazy = set()
    for name, path in found.items():
        for target, function in imports_of(name, path, set(found)):
            if function is not None:
                lazy.add((name, function))
            if not target:
                continue  # a library
            assert target in found, f"{name} imports {target}, which is not a module of relay"
            if target != name:
                edges[name].add(target)
    return edges, lazy


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return groups


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in BELOW else "relay"


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} ({layer(a)}) imports {b} ({layer(b)})"
                  for a, targets in edges.items() for b in targets if layer(b) not in BELOW[layer(a)])


def test_the_relay_package_has_no_import_cycle():
    edges, _ = graph()
    assert cycles(edges) == []


def test_each_layer_imports_only_from_itself_and_the_layers_below():
    edges, _ = graph()
    assert upward(edges) == []


def test_imports_inside_functions_are_only_the_named_lazy_ones():
    _, lazy = graph()
    assert lazy == LAZY


def test_the_graph_is_read_from_every_kind_of_import(tmp_path):
    # The checks above must not pass by seeing nothing: the graph holds the
    # edges the wiring is made of, and the checkers find what they look for.
    edges, _ = graph()
    assert {"relay.fanout.hub", "relay.store", "relay.server.router"} <= edges["relay.server.app"]
    assert "relay.core.wire" in edges["relay.fanout.ws"] and "relay.core.wire" in edges["relay.client.subscriber"]
    assert "relay.store.redis" in edges["relay.store"]  # inside open_store
    assert sum(len(t) for t in edges.values()) > 150
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from relay.server import app\n"
                      "def f():\n    from ..fanout import hub\n    import json\n")
    assert imports_of("relay.core.m", source, {"relay.server.app", "relay.fanout.hub"}) == [
        ("relay.server.app", None), ("relay.fanout.hub", "f"), ("", "f")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert upward({"relay.core.x": {"relay.fanout.hub"}}) == [
        "relay.core.x (core) imports relay.fanout.hub (fanout)"]
# What the core may never load, even through a library it uses.
IO_MODULES = ("trio", "anyio", "coredis", "asyncio", "socket", "ssl", "sqlite3")
CORE = sorted(f"relay.core.{m.name}" for m in pkgutil.iter_modules(relay.core.__path__))


def loaded_by(module: str) -> list[str]:
    """The I/O modules in sys.modules after importing ``module`` alone."""
    script = (f"import sys, json; import {module}; "
              f"print(json.dumps([m for m in {IO_MODULES!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_core_has_its_modules():
    # The parametrised test below must not pass by finding nothing.
    assert {"relay.core.http1", "relay.core.outbox", "relay.core.ingest"} <= set(CORE)


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_loads_no_event_loop_socket_or_database(module):
    assert loaded_by(module) == []


def test_the_check_fails_for_a_module_that_loads_io():
    assert "trio" in loaded_by("relay.store.base")
