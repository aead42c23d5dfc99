"""Development sessions: ``nox -s tests lint typecheck docs coverage build``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the whole test suite (gearmand tests need Debian's gearman packages)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: lint rules (including ASYNC, B, PT, UP, RUF, I) and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, tests, examples, benchmarks and this file."""
    session.install("-e", ".[test]", "mypy", "nox")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with Sphinx, warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def build(session: nox.Session) -> None:
    """Build the sdist and wheel."""
    session.install("build")
    session.run("python", "-m", "build")


@nox.session
def coverage(session: nox.Session) -> None:
    """Branch coverage of the test suite, with CI's floors (100 % of _proto, 95 % overall)."""
    session.install("-e", ".[test]")
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "combine")
    session.run("coverage", "report", "--include=trio_gearman/_proto/*", "--fail-under=100")
    session.run("coverage", "report", "--fail-under=95")
