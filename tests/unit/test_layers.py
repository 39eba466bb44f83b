"""Imports run one way: the package's import graph, read with ``ast``, has no circle and no import up.

Layers, top down: front doors (``kernel/``, ``server/``, ``hub/``, ``cli.py``) → client
(``api.py``, ``session.py``, ``rest.py``, ``views.py``, ``models.py``) → ``services/`` → domain
(``cluster/``, ``ml/``, ``registry/``, ``security/``) → base (``config.py``, ``errors.py``,
``schemas.py``, ``reprs/``). Every import counts, including those inside functions: they run later, but they
still tie the two modules together.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "lepton_lab"
ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / PACKAGE

CLIENT_AND_DOORS = ("kernel", "server", "hub", "api", "session", "rest", "views", "models", "services", "cli")
DOORS = ("kernel", "server", "hub", "api", "cli")
DOMAIN = ("ml", "registry", "cluster", "security")
#: module prefix → the package modules it must never import (each also covers its submodules)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    **{f"{PACKAGE}.{domain}": CLIENT_AND_DOORS for domain in DOMAIN},
    f"{PACKAGE}.config": CLIENT_AND_DOORS,
    f"{PACKAGE}.errors": CLIENT_AND_DOORS,
    f"{PACKAGE}.reprs": CLIENT_AND_DOORS + DOMAIN,
    f"{PACKAGE}.schemas": CLIENT_AND_DOORS + DOMAIN,
    f"{PACKAGE}.services": DOORS,
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module of the package
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.where}: {self.source} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SOURCE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module that importing ``name`` loads (the longest prefix that is a module)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    where = path.relative_to(ROOT).as_posix()
    found: list[Import] = []

    def add(name: str, node: ast.AST) -> None:
        target = _resolve(name, modules)
        if target is not None and target != module:
            found.append(Import(module, target, f"{where}:{node.lineno}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                # ``from pkg import mod`` loads pkg.mod; ``from mod import name`` loads mod
                submodule = f"{origin}.{alias.name}"
                add(submodule if submodule in modules else origin, node)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and node.args[0].value.startswith(f"{PACKAGE}.")):
            add(node.args[0].value, node)
    return list(dict.fromkeys(found))


def _graph() -> list[Import]:
    modules = _modules()
    return [imp for name, path in modules.items() for imp in _imports(name, path, modules)]


def _cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    succ: dict[str, set[str]] = {}
    for e in edges:
        succ.setdefault(e.source, set()).add(e.target)
        succ.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(succ):
        if root in index:
            continue
        work = [(root, iter(sorted(succ[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(succ[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_graph_is_read():
    edges = _graph()
    pairs = {(e.source, e.target) for e in edges}
    # a relative import, an absolute one and one inside a function are all seen
    assert (f"{PACKAGE}.api", f"{PACKAGE}.session") in pairs
    assert (f"{PACKAGE}.registry.store", f"{PACKAGE}.registry.manifest") in pairs
    assert (f"{PACKAGE}.api", f"{PACKAGE}.ml.train") in pairs
    assert len(_modules()) > 40


def test_no_import_circle():
    edges = _graph()
    cycles = _cycles(edges)
    lines = []
    for component in cycles:
        members = set(component)
        lines.append(f"circle of {len(component)} modules: {', '.join(component)}")
        lines += [f"  {e}" for e in edges if e.source in members and e.target in members]
    assert not cycles, "\n".join(lines)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_import_runs_up(layer):
    bad = [e for e in _graph() if _within(e.source, layer)
           and any(_within(e.target, f"{PACKAGE}.{up}") for up in FORBIDDEN[layer])]
    assert not bad, f"{layer} must not import {', '.join(FORBIDDEN[layer])}:\n" + "\n".join(map(str, bad))


def test_registry_never_imports_ml():
    # The registry owns the model specs it stores (registry/modelspec.py); ml builds on the registry.
    bad = [e for e in _graph() if _within(e.source, f"{PACKAGE}.registry") and _within(e.target, f"{PACKAGE}.ml")]
    assert not bad, "the registry must not import lepton_lab.ml:\n" + "\n".join(map(str, bad))


def test_the_checks_catch_what_they_claim():
    edges = [Import("a", "b", "a.py:1"), Import("b", "c", "b.py:2"), Import("c", "a", "c.py:3"),
             Import("c", "d", "c.py:4")]
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles(edges[1:]) == []
    assert str(edges[0]) == "a.py:1: a imports b"
