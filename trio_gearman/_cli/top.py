"""``trio-gearman top``: the job servers' functions, live in the terminal, like ``top``.

Each poll asks every server ``status``, ``prioritystatus``, ``workers`` and
``version`` over an admin connection kept between polls; :mod:`.top_model` turns the
answers into rows. The screen is drawn with ``rich`` (the ``monitor`` extra), imported
only when the command runs, so the package itself never needs it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import ssl
import sys
import time
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING, Final

import anyio

from .._client.admin import AdminClient
from .._exceptions import AdminError, GearmanError
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    UsageError,
    add_common_options,
    error,
    resolve_servers,
    server_arguments,
    tls_context,
)
from .options import seconds
from .top_model import (
    FunctionRow,
    ServerSnapshot,
    failed_snapshot,
    format_change,
    function_rows,
    snapshot,
)

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = ["MONITOR_HINT", "POLL_TIMEOUT", "add_top_parser", "render_frame", "run_top"]

POLL_TIMEOUT: Final = 5.0
"""Seconds a server gets to answer one poll (connecting included)."""
MONITOR_HINT: Final = "install the 'monitor' extra: pip install 'trio-gearman[monitor]'"
_PLAIN_WIDTH: Final = 1000  # not a terminal: no wrapping, each row on one line

_EPILOG = """\
One row per function and server, most waiting jobs first, then most running:
  waiting          jobs waiting for a worker
  high/normal/low  the waiting jobs by priority ('-' where the server does not
                   answer prioritystatus; waiting is then status's total less running)
  running          jobs a worker holds
  workers          connections registered for the function
  change/s         how fast the function's jobs (waiting + running) grew (+) or
                   shrank (-) per second since the previous poll; not a throughput:
                   jobs submitted as fast as they finish show 0
Above the table, each server: up or why not, its version, its connections (ours
included) and how many of them registered a function.

Press q to quit. --once prints one frame (no escape codes unless stdout is a
terminal) and exits: 0, or 1 when a server did not answer, 3 when none did.
"""


def add_top_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``top`` subcommand."""
    parser = commands.add_parser(
        "top",
        help="watch the job servers' functions live: waiting, running, workers",
        description="A live view of the job servers' functions, refreshed every few seconds.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "server_arguments",
        metavar="SERVER",
        type=server_arguments,
        nargs="*",
        help="job servers, HOST:PORT (with --servers: both are watched)",
    )
    parser.add_argument(
        "--interval",
        type=seconds(zero=False),
        default=2.0,
        metavar="SECONDS",
        help="seconds between polls (default: 2)",
    )
    parser.add_argument(
        "--once", action="store_true", help="print one frame and exit (for scripts)"
    )
    add_common_options(parser, timeout=False)
    parser.set_defaults(run=run_top, parser=parser)


def _servers(options: argparse.Namespace, tls: bool) -> list[str]:
    given = [server for group in options.server_arguments for server in group]
    if options.servers is not None:
        given += options.servers
    servers = resolve_servers(given or None, tls=tls)[0]
    return list(dict.fromkeys(servers))


# --- polling ---------------------------------------------------------------------------------


class _Poller:
    """Polls one server over one admin connection, opened again after a failure."""

    def __init__(self, server: str, context: ssl.SSLContext | None) -> None:
        self.server = server
        self._context = context
        self._admin: AdminClient | None = None
        self._priority_status = True  # until the server refuses the command

    async def poll(self) -> ServerSnapshot:
        """This server's snapshot now: its answers, or why there are none."""
        try:
            with anyio.fail_after(POLL_TIMEOUT):
                return await self._ask()
        except TimeoutError:
            reason = f"no answer within {POLL_TIMEOUT:g} s"
        except GearmanError as exc:
            reason = str(exc).removeprefix(f"{self.server}: ")
        await self.aclose()
        return failed_snapshot(self.server, anyio.current_time(), reason)

    async def _ask(self) -> ServerSnapshot:
        if self._admin is None:
            admin = AdminClient(self.server, ssl_context=self._context)
            await admin.__aenter__()
            self._admin = admin
        admin = self._admin
        status = await admin.status()
        when = anyio.current_time()
        priority = None
        if self._priority_status:
            try:
                priority = await admin.priority_status()
            except AdminError:  # a server older than gearmand 1.1.15
                self._priority_status = False
        workers = await admin.workers()
        version = await admin.version()
        return snapshot(
            self.server,
            when,
            status=status,
            priority_status=priority,
            workers=workers,
            version=version,
        )

    async def aclose(self) -> None:
        """Close the admin connection, if one is open."""
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.aclose()


async def _poll_all(pollers: Sequence[_Poller]) -> list[ServerSnapshot]:
    """Every server's snapshot, polled at the same time, in the servers' order."""
    found: list[ServerSnapshot | None] = [None] * len(pollers)

    async def poll(index: int) -> None:
        found[index] = await pollers[index].poll()

    async with anyio.create_task_group() as tg:
        for index in range(len(pollers)):
            tg.start_soon(poll, index)
    return [shot for shot in found if shot is not None]


# --- drawing ---------------------------------------------------------------------------------


def _count(number: int | None, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _priorities(row: FunctionRow) -> str:
    levels = row.counts.priorities
    return "-" if levels is None else "/".join(str(level) for level in levels)


def render_frame(
    snapshots: Sequence[ServerSnapshot], rows: Sequence[FunctionRow], *, title: str | None = None
) -> RenderableType:
    """One frame: an optional title, a line per server, and the functions' table."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    servers = Table.grid(padding=(0, 2))
    for _ in range(3):
        servers.add_column()
    servers.add_column(justify="right")
    for shot in snapshots:
        if shot.error is not None:
            servers.add_row(Text(shot.server), Text("down", style="bold red"), Text(shot.error))
            continue
        servers.add_row(
            Text(shot.server),
            Text("up", style="green"),
            Text(f"version {shot.version}"),
            Text(f"{_count(shot.connections, 'connection')} ({_count(shot.workers, 'worker')})"),
        )
    several = len(snapshots) > 1
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("function", overflow="fold")
    if several:
        table.add_column("server")
    for name in ("waiting", "high/normal/low", "running", "workers", "change/s"):
        table.add_column(name, justify="right")
    for row in rows:
        cells = [Text(row.function)]
        if several:
            cells.append(Text(row.server))
        counts = row.counts
        cells += [
            Text(str(counts.waiting), style="bold" if counts.waiting else ""),
            Text(_priorities(row)),
            Text(str(counts.running)),
            Text(
                str(counts.workers),
                style="bold red" if counts.waiting and not counts.workers else "",
            ),
            Text(format_change(row.change)),
        ]
        table.add_row(*cells)
    parts: list[RenderableType] = [] if title is None else [Text(title, style="reverse")]
    parts += [servers, Text(""), table]
    if not rows:
        parts.append(Text("(no functions)"))
    return Group(*parts)


def _console(stream: IO[str]) -> Console:
    from rich.console import Console

    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if terminal:
        return Console(file=stream, force_terminal=True)
    return Console(
        file=stream, force_terminal=False, color_system=None, width=_PLAIN_WIDTH, highlight=False
    )


# --- the keyboard ----------------------------------------------------------------------------


@contextlib.contextmanager
def _keys(stream: IO[str]) -> Iterator[int | None]:
    """The terminal's fd in cbreak mode (keys one by one, no echo), restored at the end.

    Yields ``None`` when input is not a terminal: there are no keys to read then
    (Ctrl-C still stops the command).
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if sys.platform == "win32" or fd < 0 or not os.isatty(fd):
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _wait_for_quit(fd: int) -> None:
    """Return when ``q`` is pressed."""
    while True:
        await anyio.wait_readable(fd)
        if b"q" in os.read(fd, 1024).lower():
            return


# --- the command -----------------------------------------------------------------------------


async def _live(pollers: Sequence[_Poller], interval: float, console: Console) -> None:
    from rich.live import Live
    from rich.text import Text

    start = f"trio-gearman top: asking {', '.join(p.server for p in pollers)}"
    with (
        _keys(sys.stdin) as fd,
        Live(Text(start), console=console, screen=True, auto_refresh=False) as live,
    ):
        async with anyio.create_task_group() as tg:

            async def refresh() -> None:
                previous: dict[str, ServerSnapshot] = {}
                while True:
                    began = anyio.current_time()
                    shots = await _poll_all(pollers)
                    rows = function_rows(shots, previous)
                    previous = {shot.server: shot for shot in shots}
                    quit_hint = ", q quits" if fd is not None else ""
                    title = (
                        f"trio-gearman top  {time.strftime('%H:%M:%S')}  "
                        f"every {interval:g} s{quit_hint}"
                    )
                    live.update(render_frame(shots, rows, title=title), refresh=True)
                    await anyio.sleep_until(began + interval)

            tg.start_soon(refresh)
            if fd is None:
                await anyio.sleep_forever()
            else:
                await _wait_for_quit(fd)
            tg.cancel_scope.cancel()


async def run_top(options: argparse.Namespace) -> int:
    """Run ``top``; return the exit status."""
    context = tls_context(options)
    servers = _servers(options, context is not None)
    try:
        import rich  # noqa: F401
    except ImportError:
        error(MONITOR_HINT)
        return EXIT_FAILED
    console = _console(sys.stdout)
    if not options.once and not console.is_terminal:
        raise UsageError("stdout is not a terminal: use --once to print one frame")
    pollers = [_Poller(server, context) for server in servers]
    try:
        if not options.once:
            await _live(pollers, options.interval, console)
            return EXIT_OK
        shots = await _poll_all(pollers)
    finally:
        with anyio.CancelScope(shield=True):
            for poller in pollers:
                await poller.aclose()
    down = [shot for shot in shots if not shot.up]
    if len(down) == len(shots):
        reasons = "; ".join(f"{shot.server}: {shot.error}" for shot in down)
        error(f"no Gearman server could be reached: {reasons}")
        return EXIT_UNREACHABLE
    frame = render_frame(shots, function_rows(shots))
    if console.is_terminal:
        console.print(frame)
    else:  # plain text: no padding at the ends of the lines
        with console.capture() as captured:
            console.print(frame)
        lines = captured.get().split("\n")
        sys.stdout.write("\n".join(line.rstrip() for line in lines))
        sys.stdout.flush()
    for shot in down:
        error(f"{shot.server}: {shot.error}")
    return EXIT_FAILED if down else EXIT_OK
