"""The package's shape: layers that only import downwards, no import cycles, no module
reaching into another's private members.

Every import counts, including those under ``if TYPE_CHECKING:`` and inside functions:
a cycle hidden from the interpreter is still a cycle for the reader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_gearman

# The sources of the package under test (also those of a compiled build, which keeps them).
PACKAGE = Path(trio_gearman.__file__).resolve().parent

# Each module belongs to the first layer whose prefix it matches; a module may import
# from its own part and from parts in lower layers only.  Parts on one layer are
# siblings and may not import each other.
LAYERS: list[list[str]] = [
    ["_version", "_exceptions"],
    ["_proto"],
    ["_address", "_payload"],
    ["_net"],
    ["_failover"],
    ["_server", "_client", "_worker"],
    ["testing", "_monitor"],
    ["_cli", "pytest_plugin", ""],
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            targets = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        found.update(t for t in targets if t in known and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _part(module: str) -> str:
    """The part of the package a module belongs to: ``_proto``, ``_server``, ..."""
    rest = module.removeprefix("trio_gearman").removeprefix(".")
    return rest.split(".")[0]


def _layer(part: str) -> int:
    for index, parts in enumerate(LAYERS):
        if part in parts:
            return index
    raise AssertionError(f"{part!r} is in no layer of LAYERS: add it where it belongs")


def _cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> Iterator[list[str]]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                yield from visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                yield sorted(component)

    for node in sorted(graph):
        if node not in index:
            yield from visit(node)


def test_the_graph_sees_imports() -> None:
    graph = _graph()
    assert "trio_gearman._proto" in graph["trio_gearman._net.stream"]
    assert graph["trio_gearman._proto._packets"] == set()


def test_cycle_finder_finds_a_cycle() -> None:
    assert list(_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert list(_cycles(_graph())) == []


def test_every_part_has_a_layer() -> None:
    for module in _graph():
        _layer(_part(module))


@pytest.mark.parametrize("module", sorted(_graph()))
def test_imports_go_downwards(module: str) -> None:
    part = _part(module)
    wrong = [
        dep
        for dep in sorted(_graph()[module])
        if _part(dep) != part and _layer(_part(dep)) >= _layer(part) and _part(dep) != ""
    ]
    assert wrong == [], f"{module} (layer {_layer(part)}) imports sideways or upwards"


def _private_names_defined(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def test_no_module_reaches_into_another_modules_private_members() -> None:
    """``obj._member`` is fine where ``_member`` is defined in the same module (a class's
    own helpers, or two classes of one module); elsewhere it is a hidden interface."""
    trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in _modules().items()}
    defined = {name: _private_names_defined(tree) for name, tree in trees.items()}
    offences = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__") or attr in defined[name]:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
                continue
            if any(attr in names for other, names in defined.items() if other != name):
                offences.append(f"{name}:{node.lineno}: .{attr}")
    assert offences == []


def test_no_cast_to_any() -> None:
    offences = [
        f"{name}"
        for name, path in _modules().items()
        if "cast(Any" in path.read_text(encoding="utf-8")
    ]
    assert offences == []
