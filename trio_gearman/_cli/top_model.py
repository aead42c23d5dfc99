"""What ``trio-gearman top`` shows, from what the servers answered: plain functions.

A poll of one server gives a :class:`ServerSnapshot` (its functions' counts, or the
error that stopped the poll). :func:`function_rows` turns the snapshots of a poll,
and those of the poll before, into the table's rows: one per function and server,
busiest first, each with the change of its jobs per second since the previous poll.
No I/O, no clock: the times come in with the snapshots.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from .._proto._admin import FunctionPriorityStatus, FunctionStatus, WorkerInfo

__all__ = [
    "FunctionCounts",
    "FunctionRow",
    "ServerSnapshot",
    "change_per_second",
    "failed_snapshot",
    "format_change",
    "function_rows",
    "printable",
    "snapshot",
]


@attrs.frozen
class FunctionCounts:
    """One function on one server at one poll.

    Attributes:
        function: the function's name, as on the wire.
        waiting: jobs waiting for a worker.
        running: jobs a worker holds.
        workers: connections registered for the function.
        priorities: the waiting jobs at HIGH, NORMAL and LOW priority, where the server
            answered ``prioritystatus``; else ``None`` (``waiting`` is then ``status``'s
            total less its running jobs).
    """

    function: bytes
    waiting: int
    running: int
    workers: int
    priorities: tuple[int, int, int] | None = None

    @property
    def held(self) -> int:
        """The jobs the server holds for the function: waiting and running."""
        return self.waiting + self.running


@attrs.frozen
class ServerSnapshot:
    """One poll of one server.

    Attributes:
        server: ``host:port``.
        time: when the answer came (seconds on any monotonic clock).
        error: why the poll failed, or ``None`` when the server answered.
        version: the server's version.
        connections: the connections the server lists (``workers``), the poller's own
            admin connection included.
        workers: the connections that registered at least one function.
        functions: the functions, in the server's order.
    """

    server: str
    time: float
    error: str | None = None
    version: str | None = None
    connections: int | None = None
    workers: int | None = None
    functions: tuple[FunctionCounts, ...] = ()

    @property
    def up(self) -> bool:
        """Whether the server answered this poll."""
        return self.error is None


def snapshot(
    server: str,
    time: float,
    *,
    status: Iterable[FunctionStatus],
    priority_status: Iterable[FunctionPriorityStatus] | None,
    workers: Sequence[WorkerInfo],
    version: str,
) -> ServerSnapshot:
    """A server's snapshot from its answers to ``status``, ``prioritystatus``,
    ``workers`` and ``version``.

    ``running`` and ``workers`` come from ``status``; the waiting jobs from
    ``prioritystatus`` where there is an answer for the function (``None``: the
    server does not know the command), else from ``status`` (total less running).
    """
    by_priority = {row.function: row for row in priority_status or ()}
    functions = []
    for row in status:
        found = by_priority.get(row.function)
        if found is None:
            counts = FunctionCounts(
                row.function, max(row.total - row.running, 0), row.running, row.workers
            )
        else:
            levels = (found.high, found.normal, found.low)
            counts = FunctionCounts(row.function, sum(levels), row.running, row.workers, levels)
        functions.append(counts)
    return ServerSnapshot(
        server,
        time,
        version=version,
        connections=len(workers),
        workers=sum(1 for connection in workers if connection.functions),
        functions=tuple(functions),
    )


def failed_snapshot(server: str, time: float, error: str) -> ServerSnapshot:
    """The snapshot of a server whose poll failed with ``error``."""
    return ServerSnapshot(server, time, error=error)


@attrs.frozen
class FunctionRow:
    """One row of the table.

    Attributes:
        server: the server the counts are from.
        function: the function's name, fit to print (see :func:`printable`).
        counts: the counts of this poll.
        change: how many jobs per second the function's held jobs (waiting and
            running) grew (positive) or shrank (negative) since the previous poll;
            ``None`` without a previous poll of the function on that server.
    """

    server: str
    function: str
    counts: FunctionCounts
    change: float | None = None


def change_per_second(
    before: FunctionCounts | None, after: FunctionCounts, elapsed: float
) -> float | None:
    """The change of held jobs per second between two polls of a function.

    This is not a throughput: jobs submitted as fast as they finish show 0. It says
    whether a backlog grows or drains, and how fast.
    """
    if before is None or elapsed <= 0:
        return None
    return (after.held - before.held) / elapsed


def printable(name: bytes) -> str:
    """A function name fit for a terminal: UTF-8 where it is, escapes for the rest.

    Undecodable bytes become ``\\xNN``, as do control characters (an escape sequence
    in a function's name must not steer the terminal).
    """
    text = name.decode(errors="backslashreplace")
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode() for char in text
    )


def _sort_key(row: FunctionRow, order: Mapping[str, int]) -> tuple[int, int, str, int]:
    return (-row.counts.waiting, -row.counts.running, row.function, order.get(row.server, 0))


def function_rows(
    current: Sequence[ServerSnapshot], previous: Mapping[str, ServerSnapshot] | None = None
) -> list[FunctionRow]:
    """The table's rows: one per function and server that answered.

    Sorted by waiting jobs, then running jobs (most first), then name, then the
    servers' order in ``current``.

    Args:
        current: the snapshots of this poll, one per server.
        previous: the last snapshot of each server before this poll, by address.
    """
    previous = previous or {}
    order = {shot.server: index for index, shot in enumerate(current)}
    rows = []
    for shot in current:
        before = previous.get(shot.server)
        earlier = (
            {} if before is None or not before.up else {f.function: f for f in before.functions}
        )
        elapsed = shot.time - before.time if before is not None else 0.0
        for counts in shot.functions:
            change = change_per_second(earlier.get(counts.function), counts, elapsed)
            rows.append(FunctionRow(shot.server, printable(counts.function), counts, change))
    rows.sort(key=lambda row: _sort_key(row, order))
    return rows


def format_change(change: float | None) -> str:
    """A change per second as the table shows it: ``+1.5``, ``-3.0``, ``0``; ``-`` unknown."""
    if change is None:
        return "-"
    return "0" if change == 0 else f"{change:+.1f}"
