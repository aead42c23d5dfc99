"""pytest fixtures for testing Gearman clients and workers against an embedded server.

Loaded through the ``pytest11`` entry point of the package. The fixtures are
async: use them from pytest-trio tests (``trio_mode = true``, or
``@pytest.mark.trio``) or AnyIO tests (``@pytest.mark.anyio``). Nothing here is
autouse, and the job server, client and worker are imported only when a fixture
needs them: tests that use none of them pay nothing.

Fixtures:
    gearman_server: a fresh :class:`~trio_gearman.testing.EmbeddedServer` per test.
    gearman_server_options: the options its job server gets (override to compute
        them otherwise).
    gearman_servers: a factory of more: ``a, b, c = await gearman_servers(3)``.
    gearman_client: a :class:`~trio_gearman.Client` connected to ``gearman_server``.
    gearman_worker: a running :class:`~trio_gearman.Worker` connected to
        ``gearman_server``, with no function yet: register them in the test.

Server options come from the ``gearman_server`` marker, closest first, then from
ini options::

    [pytest]
    gearman_exceptions = true
    gearman_job_retries = 2
    gearman_worker_wakeup = 1
    gearman_job_handle_prefix = H:test

Example:
    >>> async def reverse(job):
    ...     return job.data[::-1]
    >>> @pytest.mark.gearman_server(job_retries=2)
    ... async def test_reverse(gearman_server, gearman_worker, gearman_client):
    ...     gearman_worker.register("reverse", reverse)
    ...     assert await gearman_client.submit("reverse", b"abc") == b"cba"
    ...     assert gearman_server.history[0].outcome == "completed"
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import anyio.abc

    from ._client.client import Client
    from ._worker.worker import Worker
    from .testing._embedded import EmbeddedServer

__all__ = ["GearmanServers", "server_options"]

_MARKER = "gearman_server"
_INI: dict[str, tuple[str, str | None, str]] = {
    # option: (ini name, ini type, help)
    "exceptions": (
        "gearman_exceptions",
        "bool",
        "gearman_server fixtures: every connection starts with the exceptions option on",
    ),
    "job_retries": (
        "gearman_job_retries",
        None,
        "gearman_server fixtures: total attempts of a job whose worker goes away (0: unlimited)",
    ),
    "worker_wakeup": (
        "gearman_worker_wakeup",
        None,
        "gearman_server fixtures: NOOPs sent per queued job (0: every sleeping worker)",
    ),
    "job_handle_prefix": (
        "gearman_job_handle_prefix",
        None,
        "gearman_server fixtures: job handles are PREFIX:N",
    ),
}
_DEFAULTS: dict[str, Any] = {
    "exceptions": False,
    "job_retries": 0,
    "worker_wakeup": 0,
    "job_handle_prefix": "H:localhost",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ini options of the server fixtures."""
    for option, (name, kind, text) in _INI.items():
        default = _DEFAULTS[option]
        parser.addini(name, text, type=kind, default=default if kind else str(default))  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``gearman_server`` marker (for ``--strict-markers``)."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(exceptions, job_retries, worker_wakeup, job_handle_prefix): options of the "
        "job server of the gearman_server and gearman_servers fixtures (keywords)",
    )


def _ini_options(config: pytest.Config) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for option, (name, kind, _) in _INI.items():
        value = config.getini(name)
        if kind == "bool":
            options[option] = bool(value)
        elif isinstance(_DEFAULTS[option], int):
            try:
                options[option] = int(str(value))
            except ValueError:
                raise pytest.UsageError(
                    f"ini option {name} must be a number, not {value!r}"
                ) from None
        else:
            options[option] = str(value)
    return options


def server_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The job server options for a test: ini options, overridden by markers.

    The marker closest to the test wins (function, then class, then module).

    Raises:
        pytest.UsageError: a marker has positional arguments or unknown options.
    """
    options = _ini_options(request.config)
    for marker in reversed(list(request.node.iter_markers(_MARKER))):
        unknown = sorted(set(marker.kwargs) - set(_DEFAULTS))
        if marker.args or unknown:
            wrong = ", ".join([*map(repr, marker.args), *unknown])
            raise pytest.UsageError(
                f"@pytest.mark.{_MARKER} takes the keyword options {', '.join(_DEFAULTS)}; "
                f"not {wrong}"
            )
        options.update(marker.kwargs)
    return options


class GearmanServers:
    """The ``gearman_servers`` fixture: starts embedded job servers on demand.

    Every server runs until the end of the test.

    Example:
        >>> async def test_failover(gearman_servers):
        ...     first, second = await gearman_servers(2)
        ...     other = (await gearman_servers(exceptions=True))[0]
    """

    def __init__(self, tg: anyio.abc.TaskGroup, options: dict[str, Any]) -> None:
        self._tg = tg
        self._options = options
        self.started: list[EmbeddedServer] = []

    async def __call__(self, count: int = 1, **options: Any) -> list[EmbeddedServer]:
        """Start ``count`` servers.

        Args:
            count: how many.
            **options: server options overriding the marker's and the ini's.

        Returns:
            The servers, each listening on a port of its own.
        """
        from .testing._embedded import EmbeddedServer

        servers = []
        for _ in range(count):
            server = EmbeddedServer(**{**self._options, **options})
            await self._tg.start(server.run)
            servers.append(server)
        self.started += servers
        return servers


@pytest.fixture
def gearman_server_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The options of the job servers of ``gearman_server`` and ``gearman_servers``.

    From the ``gearman_server`` marker closest to the test, else the ``gearman_*``
    ini options. Override this fixture to compute them otherwise.
    """
    return server_options(request)


@pytest.fixture
async def gearman_server(gearman_server_options: dict[str, Any]) -> AsyncIterator[EmbeddedServer]:
    """A fresh embedded job server on a free loopback port, for one test."""
    from .testing._embedded import open_test_server

    async with open_test_server(**gearman_server_options) as server:
        yield server


@pytest.fixture
async def gearman_servers(gearman_server_options: dict[str, Any]) -> AsyncIterator[GearmanServers]:
    """A factory of embedded job servers: ``servers = await gearman_servers(3)``."""
    import anyio

    async with anyio.create_task_group() as tg:
        yield GearmanServers(tg, gearman_server_options)
        tg.cancel_scope.cancel()


@pytest.fixture
async def gearman_client(gearman_server: EmbeddedServer) -> AsyncIterator[Client[bytes]]:
    """A :class:`~trio_gearman.Client` connected to ``gearman_server`` (results are bytes)."""
    from ._client.client import Client

    async with Client(gearman_server.address) as client:
        yield client


@pytest.fixture
async def gearman_worker(gearman_server: EmbeddedServer) -> AsyncIterator[Worker]:
    """A running :class:`~trio_gearman.Worker` connected to ``gearman_server``.

    It starts with no function: register them in the test
    (``gearman_worker.register("name", handler)``); the server learns them at
    once. At the end of the test, jobs still running are cancelled. If the test
    drops the worker's connection (``drop_connections``, ``restart``), the worker
    stops quietly; it does not reconnect.
    """
    import anyio

    from ._exceptions import ConnectionLost
    from ._worker.worker import Worker

    worker = Worker(gearman_server.address)

    async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with contextlib.suppress(ConnectionLost):
            await worker.run(task_status=task_status)

    async with anyio.create_task_group() as tg:
        await tg.start(run)
        yield worker
        worker.stop(timeout=0)
