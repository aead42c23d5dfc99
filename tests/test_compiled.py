"""The compiled build (mypyc) and the pure-Python one: which runs, and that it is whole.

``TRIO_GEARMAN_COMPILE=1 pip install .`` compiles the modules that the build backend
(``_build/trio_gearman_build.py``) lists; ``trio_gearman._proto.COMPILED`` says which build
is imported. A test run says which one it means to test with ``TRIO_GEARMAN_EXPECT_COMPILED``
(``1``: compiled; by default the pure modules, as from a checkout).
"""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import trio_gearman._proto
from trio_gearman._proto import COMPILED

BACKEND = Path(__file__).resolve().parent.parent / "_build" / "trio_gearman_build.py"


def _compiled_modules() -> set[str]:
    """The module names of the backend's ``COMPILED_MODULES`` (read, not imported: the
    backend needs setuptools)."""
    for node in ast.parse(BACKEND.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "COMPILED_MODULES"
        ):
            paths: tuple[str, ...] = ast.literal_eval(node.value)
            return {path.removesuffix(".py").replace("/", ".") for path in paths}
    raise AssertionError(f"no COMPILED_MODULES in {BACKEND}")


def _is_extension(name: str) -> bool:
    path = importlib.import_module(name).__file__
    assert path is not None
    return path.endswith(tuple(EXTENSION_SUFFIXES))


def test_the_build_is_the_one_this_run_expects() -> None:
    expected = os.environ.get("TRIO_GEARMAN_EXPECT_COMPILED", "0") == "1"
    build = "compiled" if COMPILED else "pure Python"
    assert expected == COMPILED, (
        f"this run imports the {build} build from {trio_gearman._proto.__file__}; "
        "TRIO_GEARMAN_EXPECT_COMPILED=1 tests the compiled build, 0 (the default) the pure one"
    )


def test_every_listed_module_is_compiled_exactly_when_compiled_says_so() -> None:
    modules = _compiled_modules()
    assert {"trio_gearman._proto._codec", "trio_gearman._proto.server.state"} <= modules
    assert {name: _is_extension(name) for name in sorted(modules)} == dict.fromkeys(
        sorted(modules), COMPILED
    )


def test_the_other_protocol_modules_stay_pure() -> None:
    listed = _compiled_modules()
    others = [
        info.name
        for info in pkgutil.walk_packages(trio_gearman._proto.__path__, "trio_gearman._proto.")
        if info.name not in listed
    ]
    assert "trio_gearman._proto.server.acl" in others
    assert [name for name in others if _is_extension(name)] == []
