"""The ``trio-gearman`` command: client-side tools (submit jobs, run workers, admin).

Subcommands: ``submit`` and ``status`` (:mod:`._cli_tools_submit`), ``admin``
(:mod:`._cli_tools_admin`), ``worker`` (:mod:`._cli_tools_worker`). Each reports an
error in one line on stderr and exits with a status that says what went wrong
(see :mod:`._cli_tools_common`); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

import anyio

from .._version import __version__
from .admin import add_admin_parser
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    PROG,
    UsageError,
    describe_error,
    error,
    setup_logging,
    unwrap,
)
from .monitor import add_monitor_parser
from .submit import add_status_parser, add_submit_parser
from .top import add_top_parser
from .worker import add_worker_parser

__all__ = ["build_parser", "execute", "main"]

_EPILOG = """\
exit status: 0 success; 1 the job failed, or a server refused the request or
answered ERR; 2 bad arguments; 3 no job server reachable; 124 --timeout expired;
130 interrupted.

Servers default to $GEARMAN_SERVERS (comma-separated host:port), else
127.0.0.1:4730. Run 'trio-gearman COMMAND --help' for a command's options.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line parser of ``trio-gearman`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Gearman client-side tools: submit jobs, run workers, query job servers.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        title="commands", metavar="COMMAND", dest="command", required=True
    )
    add_submit_parser(commands)
    add_status_parser(commands)
    add_admin_parser(commands)
    add_worker_parser(commands)
    add_top_parser(commands)
    add_monitor_parser(commands)
    return parser


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    return code if isinstance(code, int) else EXIT_USAGE


async def execute(argv: Sequence[str] | None = None) -> int:
    """Run a ``trio-gearman`` command line in the current event loop.

    Output goes to ``sys.stdout``/``sys.stderr`` (looked up at call time), input
    comes from ``sys.stdin``.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status (see ``trio-gearman --help``).
    """
    parser = build_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, a usage error
        return _exit_status(exc)
    if options.command != "worker":
        setup_logging(options.verbose - 1)
    timeout: float | None = getattr(options, "timeout", None)
    try:
        with anyio.fail_after(timeout) if timeout else contextlib.nullcontext():
            status: int = await options.run(options)
        return status
    except UsageError as exc:
        try:
            options.parser.error(str(exc))
        except SystemExit as usage:
            return _exit_status(usage)
        raise AssertionError("ArgumentParser.error returned") from None  # pragma: no cover
    except Exception as exc:
        described = describe_error(exc, timeout)
        if described is None:
            raise
        code, message = described
        hint: str | None = getattr(options, "timeout_hint", None)
        if hint and code == EXIT_TIMEOUT:
            message = f"{message}: {hint}"
        error(message)
        return code


def _quiet_broken_pipe() -> None:
    """stdout was closed early (``| head``): drop what is left, without a second error."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-gearman``.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 failure, 2 bad arguments, 3 no server
        reachable, 124 timed out, 130 interrupted.
    """
    try:
        return anyio.run(execute, argv, backend="trio")
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    except BaseException as exc:
        inner = unwrap(exc)
        if isinstance(inner, KeyboardInterrupt):
            error("interrupted")
            return EXIT_INTERRUPTED
        if isinstance(inner, BrokenPipeError):
            _quiet_broken_pipe()
            return EXIT_FAILED
        raise
