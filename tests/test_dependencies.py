"""Every third-party module the package imports is a declared dependency."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import trio_gearman

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
# The sources of the package under test (also those of a compiled build, which keeps them).
PACKAGE = Path(trio_gearman.__file__).resolve().parent
# Modules whose import name differs from their distribution's name.
IMPORT_NAMES = {"attrs": {"attrs", "attr"}, "pytest-trio": {"pytest_trio"}}
# Imported only where that extra is in use: the pytest plugin runs inside pytest, the
# PostgreSQL queue is optional, and so are `trio-gearman top` (rich, imported when it runs),
# the server's HTTP port (imported only with --http-port) and the web side of
# `trio-gearman monitor`. Keys: a file's name, or its path inside the package.
EXTRA_ONLY = {
    "pytest_plugin.py": "test",
    "postgres.py": "postgres",
    "_server/store/cluster.py": "postgres",
    "top.py": "monitor",
    "http.py": "monitor",
    "metrics.py": "monitor",
    "_monitor/web.py": "monitor",
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"trio_gearman"}


def _names(requirements: list[str]) -> set[str]:
    names: set[str] = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert match, requirement
        name = match.group(0).lower()
        names |= IMPORT_NAMES.get(name, {name.replace("-", "_")})
    return names


def test_every_third_party_import_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        inside = path.relative_to(PACKAGE).as_posix()
        extra = EXTRA_ONLY.get(path.name) or EXTRA_ONLY.get(inside, "")
        allowed = core | extras.get(extra, set())
        for module in sorted(_imports(path) - allowed):
            missing.append(f"{path.relative_to(PACKAGE.parent)}: {module}")
    assert missing == []


def test_exceptiongroup_is_required_where_python_lacks_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = (r for r in project["dependencies"] if r.startswith("exceptiongroup"))
    assert "python_version < '3.11'" in requirement


def test_the_package_runs_without_the_monitor_extra() -> None:
    """rich is imported when ``trio-gearman top`` runs, not when the package loads."""
    code = (
        "import sys, trio_gearman, trio_gearman.testing, trio_gearman._cli.tools, "
        "trio_gearman._cli.server\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout == "[]\n"


def test_the_monitor_extra_is_tested_and_the_core_does_not_import_it() -> None:
    """The ``test`` extra brings the monitor's; importing the package, its commands and
    the monitor's model loads none of the web stack (only ``trio-gearman monitor`` does)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "trio-gearman[monitor]" in project["optional-dependencies"]["test"]
    assert {"hypercorn", "starlette", "jinja2"} <= _names(
        project["optional-dependencies"]["monitor"]
    )
    code = (
        "import sys, trio_gearman, trio_gearman._cli.tools, trio_gearman._cli.server, "
        "trio_gearman._monitor, trio_gearman.testing\n"
        "print(sorted({'hypercorn', 'starlette', 'jinja2', 'rich', 'prometheus_client'} "
        "& set(sys.modules)))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"
