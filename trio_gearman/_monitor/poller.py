"""The poller: reads every watched server through the admin protocol, again and again.

Each server has one admin connection, kept between polls and opened again after a
failure. A poll asks ``version`` (once per connection), ``status``,
``prioritystatus`` (unless the server refused it on this connection: then ``status``
alone gives the waiting jobs) and ``workers``; what it finds, or why it found
nothing, becomes a :class:`~.model.Snapshot` in the :class:`~.model.History`.
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from collections.abc import Callable, Iterable

import anyio
import anyio.abc

from .._address import format_server, parse_server
from .._client.admin import AdminClient
from .._exceptions import AdminError, ConnectionLost, GearmanError
from .model import (
    DEFAULT_WINDOW,
    JSON,
    Filters,
    History,
    Snapshot,
    snapshot_from_replies,
    status_view,
)

__all__ = ["DEFAULT_INTERVAL", "Poller"]

DEFAULT_INTERVAL = 2.0
"""Seconds between two polls of the servers."""

_log = logging.getLogger("trio_gearman.monitor")


def _unique_servers(servers: Iterable[str], tls: bool) -> tuple[str, ...]:
    """The servers as ``host:port`` (port 4730 when none is given), each once, in order.

    A TLS server keeps its ``tls://`` (and so does every server once ``tls``).
    """
    found: dict[str, None] = {}
    for server in servers:
        found[format_server(*parse_server(server, tls=tls), default_tls=tls)] = None
    return tuple(found)


class Poller:
    """Polls job servers through the admin protocol and keeps what it read.

    Args:
        servers: the job servers, ``host[:port]`` (port 4730 by default).
        interval: seconds between polls.
        timeout: seconds one poll of one server may take, connecting included
            (default: the interval, within 1 to 5 s); a server that takes longer is
            shown down, "no answer within ... s".
        window: seconds over which rates are measured.
        clock: the monotonic clock (default ``time.monotonic``).
        wall_clock: the Unix time (default ``time.time``).
        ssl_context: the TLS settings for ``tls://`` servers; given, every server
            without a scheme is polled over TLS too.

    Run it with :meth:`run` in a task group; :meth:`view` gives what the dashboard
    shows. :meth:`poll` polls every server once, for those who drive it themselves.
    """

    def __init__(
        self,
        servers: Iterable[str],
        *,
        interval: float = DEFAULT_INTERVAL,
        timeout: float | None = None,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.servers = _unique_servers(servers, ssl_context is not None)
        self.ssl_context = ssl_context
        if not self.servers:
            raise ValueError("the monitor needs at least one server")
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"the poll interval must be a positive number, not {interval!r}")
        self.interval = interval
        self.timeout = timeout if timeout is not None else min(max(interval, 1.0), 5.0)
        if not self.timeout > 0:
            raise ValueError(f"the poll timeout must be positive, not {self.timeout!r}")
        self.history = History(self.servers, window=window)
        self.polls = 0
        self._clock = clock
        self._wall_clock = wall_clock
        self._admins: dict[str, AdminClient] = {}
        self._versions: dict[str, str] = {}
        self._no_priorities: set[str] = set()
        self._polled = anyio.Event()

    # --- what was read --------------------------------------------------------------------

    def view(self, filters: Filters | None = None) -> JSON:
        """What ``/api/status`` answers, narrowed by ``filters`` (see :func:`.status_view`)."""
        return status_view(
            self.history,
            filters or Filters(),
            now=self._clock(),
            wall=self._wall_clock(),
            interval=self.interval,
        )

    async def wait_polled(self) -> None:
        """Wait until the next round of polls has ended."""
        await self._polled.wait()

    # --- polling ---------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll every server now, report started, then again every ``interval`` seconds.

        Runs until cancelled; the admin connections are closed on the way out.
        """
        try:
            await self.poll()
            task_status.started()
            while True:
                await anyio.sleep(self.interval)
                await self.poll()
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def poll(self) -> None:
        """Poll every server once, at the same time; record a snapshot of each."""
        async with anyio.create_task_group() as tg:
            for server in self.servers:
                tg.start_soon(self._poll_server, server)
        self.polls += 1
        polled, self._polled = self._polled, anyio.Event()
        polled.set()

    async def aclose(self) -> None:
        """Close the admin connections (the next poll opens them again)."""
        admins, self._admins = self._admins, {}
        for admin in admins.values():
            await admin.aclose()

    async def _poll_server(self, server: str) -> None:
        try:
            with anyio.fail_after(self.timeout):
                kept = server in self._admins
                try:
                    snapshot = await self._read(server)
                except ConnectionLost:
                    if not kept:
                        raise
                    # The kept connection broke since the last poll: try a new one now.
                    await self._forget(server)
                    snapshot = await self._read(server)
        except (GearmanError, OSError, TimeoutError) as exc:
            await self._forget(server)
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {self.timeout:g} s"
            else:  # AdminClient's errors name the server, and wrap the OS's
                reason = str(exc).removeprefix(f"{server}: ")
            _log.info("%s: %s", server, reason)
            snapshot = Snapshot(server, self._clock(), self._wall_clock(), error=reason)
        self.history.add(snapshot)

    async def _forget(self, server: str) -> None:
        admin = self._admins.pop(server, None)
        self._versions.pop(server, None)
        self._no_priorities.discard(server)
        if admin is not None:
            await admin.aclose()

    async def _read(self, server: str) -> Snapshot:
        admin = self._admins.get(server)
        if admin is None:
            admin = AdminClient(
                server,
                connect_timeout=self.timeout,
                ssl_context=self.ssl_context,
            )
            await admin.__aenter__()
            self._admins[server] = admin
        version = self._versions.get(server)
        if version is None:
            version = self._versions[server] = await admin.version()
        status = await admin.status()
        priority_status = None
        if server not in self._no_priorities:
            try:
                priority_status = await admin.priority_status()
            except AdminError:  # a server before gearmand 1.1.15: status alone
                self._no_priorities.add(server)
        workers = await admin.workers()
        return snapshot_from_replies(
            server,
            monotonic=self._clock(),
            wall=self._wall_clock(),
            version=version,
            status=status,
            priority_status=priority_status,
            workers=workers,
        )
