"""The protocol layer stays sans-IO: it imports no I/O or clock module."""

from __future__ import annotations

import ast
from pathlib import Path

import trio_gearman._proto

FORBIDDEN = {
    "anyio",
    "trio",
    "socket",
    "time",
    "asyncio",
    "selectors",
    "select",
    "ssl",
    "subprocess",
    "threading",
    "os",
    "io",
    "datetime",
    "sqlite3",
}

PROTO_DIR = Path(trio_gearman._proto.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_proto_modules_exist() -> None:
    assert {p.name for p in PROTO_DIR.glob("*.py")} >= {"_packets.py", "_codec.py"}


def test_proto_imports_no_io_or_clock() -> None:
    offenders = {}
    for path in sorted(PROTO_DIR.rglob("*.py")):
        bad = {name for name in _imported_modules(path) if name.split(".")[0] in FORBIDDEN}
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}
