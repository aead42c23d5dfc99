"""Shared fixtures: real peers (gearmand, the gearman tools, PostgreSQL) started on loopback.

Also the AnyIO backends: modules marked ``pytest.mark.anyio`` (the client and worker
tests) run each async test once per backend, ``test_x[trio]`` and ``test_x[asyncio]``;
every other async test runs under Trio through pytest-trio's ``trio_mode``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import trio_gearman._proto

from .gearmand_peer import GearmandProcess, require_tool, run_gearmand
from .postgres_peer import PostgresCluster, running_cluster


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The commands, run in-process, configure the package's logger (handlers, level,
    no propagation): put it back after each test, so that caplog sees the next one's."""
    logger = logging.getLogger("trio_gearman")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    startup = logging.getLogger("trio_gearman.server.startup")
    startup_level = startup.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
    startup.setLevel(startup_level)


def pytest_report_header() -> str:
    """Which build the run tests: the pure-Python modules or the compiled ones (mypyc)."""
    build = "compiled with mypyc" if trio_gearman._proto.COMPILED else "pure Python"
    return f"trio_gearman: {build}, from {trio_gearman._proto.__file__}"


BACKENDS = ("trio", "asyncio")


@pytest.fixture(scope="module", params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The event loop an ``anyio``-marked test runs on: each of Trio and asyncio."""
    backend: str = request.param
    return backend


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Leave ``anyio``-marked tests to AnyIO's plugin.

    ``trio_mode`` marks every async test ``trio``, and pytest-trio then runs it under
    Trio whatever its ``anyio_backend`` says: ``test_x[asyncio]`` would run on Trio.
    This hook runs after pytest-trio's and takes that mark off again.
    """
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.own_markers[:] = [mark for mark in item.own_markers if mark.name != "trio"]


@pytest.fixture
def gearmand() -> Iterator[GearmandProcess]:
    """A fresh gearmand 1.1.20 on 127.0.0.1 with a free port, single-threaded."""
    with run_gearmand() as server:
        yield server


@pytest.fixture
def gearman_cli() -> str:
    """The path of the ``gearman`` command-line tool (libgearman 1.1.20)."""
    return require_tool("gearman")


@pytest.fixture
def gearadmin_cli() -> str:
    """The path of the ``gearadmin`` tool."""
    return require_tool("gearadmin")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throw-away PostgreSQL cluster for the whole session (``tests/postgres_peer.py``).

    A test may stop it to see the database go away; it must start it again before it
    ends (``with cluster.stopped():``).
    """
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_dsn(postgres_cluster: PostgresCluster) -> str:
    """A connection string (with the password) for the throw-away cluster's test database."""
    return postgres_cluster.dsn
