"""Shared fixtures: real peers (gearmand, the gearman tools) started on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .gearmand_peer import GearmandProcess, require_tool, run_gearmand


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
