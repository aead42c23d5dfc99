"""The monitor's model, sans-IO: snapshots of servers, their history, rates, filters.

A :class:`Snapshot` is what one poll of one server read through the admin protocol
(or why it could not). A :class:`History` keeps each server's recent snapshots; from
them :func:`status_view` computes what the dashboard and ``/api/status`` show: every
server with its functions and the rates at which their queues change, the workers,
and the totals across servers, all narrowed by :class:`Filters`.

Nothing here does I/O or reads a clock: times come in with the snapshots and the
calls, so every function is tested with plain values.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Final

import attrs

from .._proto._admin import FunctionPriorityStatus, FunctionStatus, WorkerInfo

__all__ = [
    "DEFAULT_WINDOW",
    "Connection",
    "Filters",
    "FunctionCounts",
    "History",
    "Rates",
    "Snapshot",
    "function_rates",
    "snapshot_from_replies",
    "status_view",
]

DEFAULT_WINDOW: Final = 10.0
"""Seconds over which rates are measured (at least two successive polls)."""

JSON = dict[str, object]


def _text(value: bytes) -> str:
    """A name from the wire, as text; bytes that are not UTF-8 stay distinct."""
    return value.decode(errors="backslashreplace")


@attrs.frozen
class FunctionCounts:
    """One function on one server, as one poll read it.

    Attributes:
        function: the function's name.
        total: jobs queued or running (``status``).
        running: jobs a worker holds (``status``).
        workers: connections registered for the function (``status``).
        high: jobs waiting at HIGH priority (``prioritystatus``); ``None`` when the
            server did not answer ``prioritystatus``.
        normal: the same at NORMAL priority.
        low: the same at LOW priority.
    """

    function: str
    total: int
    running: int
    workers: int
    high: int | None = None
    normal: int | None = None
    low: int | None = None

    @property
    def by_priority(self) -> bool:
        """Whether the waiting jobs are known per priority."""
        return self.high is not None and self.normal is not None and self.low is not None

    @property
    def waiting(self) -> int:
        """Jobs waiting for a worker: by priority where known, else total less running."""
        if self.high is not None and self.normal is not None and self.low is not None:
            return self.high + self.normal + self.low
        return max(self.total - self.running, 0)


@attrs.frozen
class Connection:
    """One connection a server lists in ``workers``.

    Attributes:
        fd: the server's number for the connection.
        address: the peer's IP address.
        client_id: the id the peer set (``-`` when none).
        functions: the functions it registered, sorted (none: a client or an admin
            connection).
    """

    fd: int
    address: str
    client_id: str
    functions: tuple[str, ...] = ()


@attrs.frozen
class Snapshot:
    """What one poll of one server found.

    Attributes:
        server: the server's address, ``host:port``.
        monotonic: when the poll ended, on a monotonic clock (for rates and ages).
        wall: the same moment as a Unix time (for people).
        error: why the server could not be read; ``None`` when it answered.
        version: the server's version.
        priorities: whether the server answered ``prioritystatus``.
        functions: every function the server listed.
        connections: every connection the server listed (the monitor's own too).
    """

    server: str
    monotonic: float
    wall: float
    error: str | None = None
    version: str | None = None
    priorities: bool = False
    functions: tuple[FunctionCounts, ...] = ()
    connections: tuple[Connection, ...] = ()

    @property
    def up(self) -> bool:
        """Whether the server answered."""
        return self.error is None


def snapshot_from_replies(
    server: str,
    *,
    monotonic: float,
    wall: float,
    version: str,
    status: Sequence[FunctionStatus],
    priority_status: Sequence[FunctionPriorityStatus] | None,
    workers: Sequence[WorkerInfo],
) -> Snapshot:
    """A snapshot from the typed replies of one poll.

    Args:
        server: the server's address.
        monotonic: when the poll ended (monotonic clock).
        wall: the same moment as a Unix time.
        version: the reply to ``version``.
        status: the reply to ``status``.
        priority_status: the reply to ``prioritystatus``, or ``None`` when the server
            does not know the command.
        workers: the reply to ``workers``.

    The two listings are separate commands: a function that only one of them lists
    (it came or went in between) is kept, with what that one says.
    """
    waiting = {row.function: row for row in priority_status or ()}
    functions: list[FunctionCounts] = []
    for row in status:
        by_priority = waiting.pop(row.function, None)
        functions.append(
            FunctionCounts(
                _text(row.function),
                row.total,
                row.running,
                row.workers,
                *(
                    (by_priority.high, by_priority.normal, by_priority.low)
                    if by_priority is not None
                    else (None, None, None)
                ),
            )
        )
    for late in waiting.values():
        total = late.high + late.normal + late.low
        functions.append(
            FunctionCounts(
                _text(late.function), total, 0, late.workers, late.high, late.normal, late.low
            )
        )
    connections = tuple(
        Connection(
            info.fd,
            _text(info.address),
            _text(info.client_id),
            tuple(sorted(_text(name) for name in info.functions)),
        )
        for info in workers
    )
    return Snapshot(
        server,
        monotonic,
        wall,
        version=version,
        priorities=priority_status is not None,
        functions=tuple(functions),
        connections=connections,
    )


# --- history and rates -------------------------------------------------------------------


class History:
    """Each server's recent snapshots: enough to measure rates over ``window`` seconds.

    Args:
        servers: the servers watched, in the order they are shown.
        window: the span, in seconds, over which rates are measured.
    """

    def __init__(self, servers: Iterable[str], *, window: float = DEFAULT_WINDOW) -> None:
        if not window > 0:
            raise ValueError(f"the rate window must be positive, not {window!r}")
        self.window = window
        self._snapshots: dict[str, deque[Snapshot]] = {server: deque() for server in servers}
        self._since: dict[str, float] = {}

    @property
    def servers(self) -> tuple[str, ...]:
        """The servers watched."""
        return tuple(self._snapshots)

    def add(self, snapshot: Snapshot) -> None:
        """Record a poll's snapshot, and forget what the rates no longer need.

        Raises:
            KeyError: the snapshot is of a server not watched.
        """
        kept = self._snapshots[snapshot.server]
        if not kept or kept[-1].up != snapshot.up:
            self._since[snapshot.server] = snapshot.wall
        kept.append(snapshot)
        # Keep the newest snapshot at least `window` old as the base of the rates.
        while len(kept) >= 2 and snapshot.monotonic - kept[1].monotonic >= self.window:
            kept.popleft()

    def snapshots(self, server: str) -> tuple[Snapshot, ...]:
        """A server's kept snapshots, oldest first."""
        return tuple(self._snapshots[server])

    def latest(self, server: str) -> Snapshot | None:
        """A server's newest snapshot, or ``None`` before its first poll."""
        kept = self._snapshots[server]
        return kept[-1] if kept else None

    def since(self, server: str) -> float | None:
        """When (Unix time) the server's current state, up or down, was first seen."""
        return self._since.get(server)

    def rate_base(self, server: str) -> Snapshot | None:
        """The snapshot the server's rates are measured from.

        The oldest kept snapshot of the server's current run of answers (after an
        outage, rates start again from its first answer); ``None`` while the server
        is down or has answered only once.
        """
        kept = self._snapshots[server]
        if not kept or not kept[-1].up:
            return None
        base = kept[-1]
        for snapshot in reversed(kept):
            if not snapshot.up:
                break
            base = snapshot
        return base if base is not kept[-1] else None


@attrs.frozen
class Rates:
    """How fast a function's counts change, in jobs per second (negative: shrinking).

    Attributes:
        waiting: the change of the jobs waiting for a worker.
        total: the change of the jobs queued or running.
    """

    waiting: float
    total: float


def function_rates(base: Snapshot, newest: Snapshot) -> dict[str, Rates]:
    """Per function, the rates of change between two snapshots of one server.

    A function that only the newer snapshot lists counts from zero. Empty when no
    time passed between the two.
    """
    seconds = newest.monotonic - base.monotonic
    if not seconds > 0:
        return {}
    before = {row.function: row for row in base.functions}
    rates: dict[str, Rates] = {}
    for row in newest.functions:
        old = before.get(row.function)
        old_waiting, old_total = (old.waiting, old.total) if old is not None else (0, 0)
        rates[row.function] = Rates(
            (row.waiting - old_waiting) / seconds, (row.total - old_total) / seconds
        )
    return rates


# --- filters -------------------------------------------------------------------------------

_GLOB: Final = frozenset("*?[")


@attrs.frozen
class Filters:
    """What to show: some servers, some functions.

    Attributes:
        servers: the servers to show (all when empty).
        function: a pattern for function names: empty for all; with ``*``, ``?`` or
            ``[`` a shell-style pattern matched against the whole name; otherwise a
            part of the name. Case is ignored.
    """

    servers: frozenset[str] = frozenset()
    function: str = ""

    @classmethod
    def from_query(cls, servers: Iterable[str], function: str | None) -> Filters:
        """Filters from query parameters: ``server`` (repeated or comma-separated)
        and ``function``."""
        names = frozenset(
            part.strip() for value in servers for part in value.split(",") if part.strip()
        )
        return cls(names, (function or "").strip())

    def server_shown(self, server: str) -> bool:
        """Whether the server passes the filter."""
        return not self.servers or server in self.servers

    def function_shown(self, function: str) -> bool:
        """Whether a function's name passes the filter."""
        pattern = self.function.lower()
        if not pattern:
            return True
        name = function.lower()
        if _GLOB & set(pattern):
            return fnmatchcase(name, pattern)
        return pattern in name

    def as_json(self) -> JSON:
        """The filters as ``/api/status`` reports them."""
        return {"servers": sorted(self.servers), "function": self.function}


# --- the view ------------------------------------------------------------------------------


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _iso(wall: float) -> str:
    seconds = math.floor(wall)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{int((wall - seconds) * 1000):03d}Z"


def _function_json(row: FunctionCounts, rates: Rates | None) -> JSON:
    return {
        "function": row.function,
        "waiting": row.waiting,
        "high": row.high,
        "normal": row.normal,
        "low": row.low,
        "running": row.running,
        "total": row.total,
        "workers": row.workers,
        "waiting_rate": _round(rates.waiting) if rates else None,
        "total_rate": _round(rates.total) if rates else None,
        "no_workers": row.total > 0 and row.workers == 0,
    }


def _server_json(
    history: History, server: str, filters: Filters, now: float
) -> tuple[JSON, list[JSON], list[JSON]]:
    """The server's entry, its shown functions, and its shown workers."""
    latest = history.latest(server)
    if latest is None:
        return (
            {
                "server": server,
                "up": None,
                "error": "not polled yet",
                "version": None,
                "priorities": None,
                "polled_at": None,
                "age": None,
                "since": None,
                "connections": None,
                "worker_connections": None,
                "functions": [],
            },
            [],
            [],
        )
    base = history.rate_base(server)
    rates = function_rates(base, latest) if base is not None else {}
    functions = [
        _function_json(row, rates.get(row.function))
        for row in latest.functions
        if filters.function_shown(row.function)
    ]
    workers: list[JSON] = [
        {
            "server": server,
            "fd": conn.fd,
            "address": conn.address,
            "client_id": conn.client_id,
            "functions": list(conn.functions),
        }
        for conn in latest.connections
        if conn.functions and any(filters.function_shown(name) for name in conn.functions)
    ]
    entry: JSON = {
        "server": server,
        "up": latest.up,
        "error": latest.error,
        "version": latest.version,
        "priorities": latest.priorities if latest.up else None,
        "polled_at": _iso(latest.wall),
        "age": _round(max(now - latest.monotonic, 0.0)),
        "since": _iso(history.since(server) or latest.wall),
        "connections": len(latest.connections) if latest.up else None,
        "worker_connections": sum(1 for c in latest.connections if c.functions)
        if latest.up
        else None,
        "functions": functions,
    }
    return entry, functions, workers


def _sum(values: Iterable[object]) -> float | int | None:
    """The sum of the numbers among the values; ``None`` when there are none."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(numbers) if numbers else None


_COUNTS: Final = ("waiting", "high", "normal", "low", "running", "total", "workers")
_RATES: Final = ("waiting_rate", "total_rate")


def _function_totals(per_server: Sequence[tuple[str, JSON]]) -> list[JSON]:
    """Per function, its counts added up over the servers that list it."""
    grouped: dict[str, list[tuple[str, JSON]]] = {}
    for server, row in per_server:
        name = row["function"]
        assert isinstance(name, str)
        grouped.setdefault(name, []).append((server, row))
    totals: list[JSON] = []
    for name in sorted(grouped):
        rows = [row for _, row in grouped[name]]
        total: JSON = {"function": name, "servers": [server for server, _ in grouped[name]]}
        for field in _COUNTS:
            total[field] = _sum(row[field] for row in rows)
        for field in _RATES:
            total[field] = _round(_sum(row[field] for row in rows))
        total["no_workers"] = any(row["no_workers"] for row in rows) and total["workers"] == 0
        totals.append(total)
    return totals


def status_view(
    history: History,
    filters: Filters,
    *,
    now: float,
    wall: float,
    interval: float,
) -> JSON:
    """What ``/api/status`` answers: servers, functions, workers and totals.

    Args:
        history: the snapshots polled so far.
        filters: the servers and functions to show.
        now: the time on the snapshots' monotonic clock (for the ages of polls).
        wall: the same moment as a Unix time.
        interval: the seconds between polls.

    Returns:
        A JSON-ready mapping: ``generated``, ``interval``, ``window``, ``filters``,
        ``servers`` (each with its functions), ``functions`` (added up across the
        servers shown), ``workers`` (connections with registered functions) and
        ``totals``. ``docs/howto/monitoring.rst`` describes every field.
    """
    servers: list[JSON] = []
    per_server: list[tuple[str, JSON]] = []
    workers: list[JSON] = []
    for server in history.servers:
        if not filters.server_shown(server):
            continue
        entry, functions, shown_workers = _server_json(history, server, filters, now)
        servers.append(entry)
        per_server.extend((server, row) for row in functions)
        workers.extend(shown_workers)
    functions_total = _function_totals(per_server)
    up = sum(1 for entry in servers if entry["up"] is True)
    totals: JSON = {
        "servers": len(servers),
        "up": up,
        "down": len(servers) - up,
        "functions": len(functions_total),
        "connections": _sum(entry["connections"] for entry in servers) or 0,
        "worker_connections": len(workers),
    }
    for field in ("waiting", "running", "total", "workers"):
        totals[field] = _sum(row[field] for row in functions_total) or 0
    for field in _RATES:
        totals[field] = _round(_sum(row[field] for row in functions_total))
    return {
        "generated": _iso(wall),
        "interval": interval,
        "window": history.window,
        "filters": filters.as_json(),
        "servers": servers,
        "functions": functions_total,
        "workers": workers,
        "totals": totals,
    }
