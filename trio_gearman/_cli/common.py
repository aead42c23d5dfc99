"""What the ``trio-gearman`` subcommands share: server lists, exit codes, output, errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from typing import Final

from .._address import server_list
from .._exceptions import (
    ConnectFailed,
    GearmanError,
    InvalidArgument,
    NoServersAvailable,
)
from .._net.stream import os_error_text
from .options import UsageError, leaves, seconds

__all__ = [
    "DEFAULT_SERVERS",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "PROG",
    "SERVERS_ENV",
    "UsageError",
    "add_common_options",
    "connect_failure",
    "describe_error",
    "error",
    "resolve_servers",
    "setup_logging",
    "unwrap",
    "write_err",
    "write_out",
]

PROG: Final = "trio-gearman"
DEFAULT_SERVERS: Final = "127.0.0.1:4730"
SERVERS_ENV: Final = "GEARMAN_SERVERS"

EXIT_OK: Final = 0
"""Success."""
EXIT_FAILED: Final = 1
"""The job failed, the server refused the request or answered ``ERR``, a connection broke."""
EXIT_USAGE: Final = 2
"""A bad command line (argparse's status), or a worker object that cannot be loaded."""
EXIT_UNREACHABLE: Final = 3
"""No server could be reached."""
EXIT_TIMEOUT: Final = 124
"""``--timeout`` expired (the status ``timeout(1)`` uses)."""
EXIT_INTERRUPTED: Final = 130
"""Interrupted by SIGINT outside the worker (128 + SIGINT, as shells report it)."""


# --- options shared by the subcommands ----------------------------------------------------


def _servers(text: str) -> list[str]:
    try:
        return server_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_common_options(parser: argparse.ArgumentParser, *, timeout: bool = True) -> None:
    """Add ``--servers``, ``--timeout`` and ``--verbose`` to a subcommand's parser."""
    parser.add_argument(
        "--servers",
        type=_servers,
        metavar="HOST:PORT,...",
        help=f"job servers, comma-separated (default: ${SERVERS_ENV}, else {DEFAULT_SERVERS})",
    )
    if timeout:
        parser.add_argument(
            "--timeout",
            type=seconds(zero=False),
            metavar="SECONDS",
            help="give up after this many seconds (exit status 124)",
        )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="say more on stderr; repeat for the library's log",
    )


def resolve_servers(
    given: list[str] | None, environ: Mapping[str, str] | None = None
) -> tuple[list[str], str]:
    """The servers to use, and where they come from.

    Args:
        given: the value of ``--servers``, if the option was given.
        environ: the environment (default ``os.environ``).

    Returns:
        ``(servers, source)``, where ``source`` is ``"option"``, ``"env"`` or
        ``"default"``.

    Raises:
        UsageError: ``GEARMAN_SERVERS`` is malformed.
    """
    if given is not None:
        return given, "option"
    env = os.environ if environ is None else environ
    value = env.get(SERVERS_ENV, "").strip()
    if value:
        try:
            return server_list(value), "env"
        except ValueError as exc:
            raise UsageError(f"{SERVERS_ENV}={value!r}: {exc}") from None
    return [DEFAULT_SERVERS], "default"


# --- output ------------------------------------------------------------------------------


def write_out(data: bytes) -> None:
    """Write bytes to stdout at once (binary-safe, unbuffered)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def write_err(data: bytes) -> None:
    """Write bytes to stderr at once (for what a worker sent, e.g. WORK_WARNING)."""
    sys.stderr.flush()
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


def error(message: str) -> None:
    """Print ``trio-gearman: message`` on stderr."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


class _Formatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup_logging(verbose: int, *, quiet_level: int = logging.ERROR) -> None:
    """Log the package's messages to stderr.

    Args:
        verbose: 0 logs ``quiet_level`` and up, 1 INFO and up, 2 or more DEBUG.
        quiet_level: the level without ``--verbose``.
    """
    level = quiet_level if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    package_logger = logging.getLogger("trio_gearman")
    for old in list(package_logger.handlers):
        if isinstance(old.formatter, _Formatter):
            package_logger.removeHandler(old)
    package_logger.addHandler(handler)
    package_logger.setLevel(level)
    package_logger.propagate = False


# --- errors --------------------------------------------------------------------------------


def unwrap(exc: BaseException) -> BaseException:
    """The exception inside (nested) exception groups that says what went wrong.

    Task groups wrap errors in groups; the first GearmanError, TimeoutError or
    OSError inside is the one to report.
    """
    found = list(leaves(exc))
    for kind in (GearmanError, TimeoutError, OSError):
        for leaf in found:
            if isinstance(leaf, kind):
                return leaf
    return found[0] if found else exc


def connect_failure(exc: ConnectFailed) -> str:
    """``host:port: cannot connect: Connection refused`` (the OS's reason, where known)."""
    reason = os_error_text(exc)
    return f"{exc.server}: cannot connect: {reason}" if reason else str(exc)


def _unreachable(exc: NoServersAvailable) -> str:
    cause = exc.__cause__
    failures = [
        connect_failure(leaf) if isinstance(leaf, ConnectFailed) else str(leaf)
        for leaf in (leaves(cause) if cause is not None else ())
    ]
    if not failures:
        return f"no Gearman server could be reached: {', '.join(exc.servers)}"
    return "no Gearman server could be reached: " + "; ".join(failures)


def describe_error(exc: BaseException, timeout: float | None = None) -> tuple[int, str] | None:
    """The exit status and one-line message for an error, or ``None`` if it is a bug.

    Args:
        exc: the error (exception groups are looked into).
        timeout: the ``--timeout`` in force, for the message.
    """
    exc = unwrap(exc)
    if isinstance(exc, NoServersAvailable):
        return EXIT_UNREACHABLE, _unreachable(exc)
    if isinstance(exc, ConnectFailed):
        return EXIT_UNREACHABLE, connect_failure(exc)
    if isinstance(exc, InvalidArgument):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, GearmanError):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, TimeoutError):
        return EXIT_TIMEOUT, f"timed out after {timeout:g} s" if timeout else "timed out"
    if isinstance(exc, BrokenPipeError):
        return None  # stdout was closed: main() ends quietly
    if isinstance(exc, OSError):
        return EXIT_FAILED, f"{exc.strerror or exc}"
    return None
