"""``trio-gearman monitor``: a live dashboard of job servers, served over HTTP.

The web side (Hypercorn, Starlette, Jinja2) comes with the ``monitor`` extra and is
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial
from typing import Final

import anyio

from .._address import format_address
from .._monitor import DEFAULT_INTERVAL, Poller
from .._monitor.model import DEFAULT_WINDOW
from .._net.stream import os_reason
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    PROG,
    UsageError,
    add_common_options,
    error,
    resolve_servers,
    server_arguments,
    tls_context,
    unwrap,
)
from .options import seconds

__all__ = ["EXTRA_MISSING", "add_monitor_parser", "run_monitor"]

EXTRA_MISSING: Final = "install the 'monitor' extra: pip install 'trio-gearman[monitor]'"
_WEB_MODULES: Final = frozenset({"hypercorn", "starlette", "jinja2"})

_HELP = """\
Serve a live dashboard of Gearman job servers (gearmand, trio-gearmand, any server
that speaks the admin protocol): for each server whether it answers, its version and
connections; for each function the jobs waiting (by priority where the server
answers 'prioritystatus'), running, the workers and how fast the backlog changes;
the workers and what they serve; totals across servers. The page redraws itself
every poll; /api/status serves the same figures as JSON.
"""


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def add_monitor_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``monitor`` subcommand."""
    parser = commands.add_parser(
        "monitor",
        help="a live dashboard of job servers in a browser, with a JSON API",
        description=_HELP,
    )
    parser.add_argument(
        "addresses",
        metavar="SERVER",
        nargs="*",
        help="job servers, host[:port] (with --servers, all of them; default: "
        "$GEARMAN_SERVERS, else 127.0.0.1:4730)",
    )
    parser.add_argument(
        "--port", type=_port, default=8080, help="the HTTP port (default: 8080; 0: any)"
    )
    parser.add_argument(
        "--listen",
        metavar="ADDR",
        default="127.0.0.1",
        help="the address to serve on (default: 127.0.0.1; 0.0.0.0 or :: for every one)",
    )
    parser.add_argument(
        "--interval",
        type=seconds(zero=False),
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between polls of the servers (default: {DEFAULT_INTERVAL:g})",
    )
    parser.add_argument(
        "--window",
        type=seconds(zero=False),
        default=DEFAULT_WINDOW,
        metavar="SECONDS",
        help=f"seconds over which rates are measured (default: {DEFAULT_WINDOW:g})",
    )
    add_common_options(parser, timeout=False)
    parser.set_defaults(run=run_monitor, parser=parser)


def _servers(addresses: list[str], servers: list[str] | None, tls: bool) -> list[str]:
    """The positional servers and those of ``--servers``; else the environment's."""
    try:
        given = [server for text in addresses for server in server_arguments(text)]
    except argparse.ArgumentTypeError as exc:
        raise UsageError(str(exc)) from None
    return resolve_servers(given + (servers or []) or None, tls=tls)[0]


async def run_monitor(options: argparse.Namespace) -> int:
    """Run ``monitor`` until interrupted; return the exit status."""
    context = tls_context(options)
    servers = _servers(options.addresses, options.servers, context is not None)
    try:
        poller = Poller(
            servers, interval=options.interval, window=options.window, ssl_context=context
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        from .._monitor.web import serve
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in _WEB_MODULES:
            raise
        error(EXTRA_MISSING)
        return EXIT_FAILED
    address = format_address(options.listen, options.port)
    serving = False
    stopped_by: list[int] = []
    try:
        async with anyio.create_task_group() as tg:
            # Hypercorn swallows KeyboardInterrupt, so the signals are taken here.
            tg.start_soon(_stop_on_signal, tg.cancel_scope, stopped_by)
            urls = await tg.start(partial(serve, poller, host=options.listen, port=options.port))
            serving = True
            shown = ", ".join(f"{url}/" for url in urls)
            print(
                f"{PROG}: monitoring {', '.join(poller.servers)} on {shown}",
                file=sys.stderr,
                flush=True,
            )
    except Exception as exc:
        inner = unwrap(exc)
        if serving or not isinstance(inner, OSError):
            raise
        error(f"cannot serve on {address}: {os_reason(inner)}")
        return EXIT_FAILED
    if stopped_by == [signal.SIGINT]:
        error("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK


async def _stop_on_signal(scope: anyio.CancelScope, stopped_by: list[int]) -> None:
    """Stop the monitor on SIGINT (exit status 130) or SIGTERM (0)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            stopped_by.append(signum)
            scope.cancel()
            return
