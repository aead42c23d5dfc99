"""What the ``trio-gearman`` subcommands share: server lists, TLS, exit codes, output, errors."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
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
from .._net.stream import os_error_text, tls_error_text
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
    "add_tls_options",
    "connect_failure",
    "describe_error",
    "error",
    "resolve_servers",
    "server_arguments",
    "setup_logging",
    "tls_context",
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


def server_arguments(text: str) -> list[str]:
    """An argparse ``type`` for a comma-separated server list.

    The addresses are checked but kept as written: whether ``host:port`` means TLS
    is known only once every option is read (:func:`resolve_servers` decides).
    """
    try:
        server_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return [part.strip() for part in text.split(",") if part.strip()]


def add_common_options(parser: argparse.ArgumentParser, *, timeout: bool = True) -> None:
    """Add ``--servers``, the TLS options, ``--timeout`` and ``--verbose`` to a parser."""
    parser.add_argument(
        "--servers",
        type=server_arguments,
        metavar="HOST:PORT,...",
        help=f"job servers, comma-separated (default: ${SERVERS_ENV}, else {DEFAULT_SERVERS}); "
        "tls://HOST:PORT for TLS to that one",
    )
    add_tls_options(parser)
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
    given: list[str] | None, environ: Mapping[str, str] | None = None, *, tls: bool = False
) -> tuple[list[str], str]:
    """The servers to use, and where they come from.

    Args:
        given: the value of ``--servers``, if the option was given.
        environ: the environment (default ``os.environ``).
        tls: whether a server without ``tls://`` or ``tcp://`` is spoken to over
            TLS (``--ssl`` or another TLS option was given).

    Returns:
        ``(servers, source)``: the servers normalised (``tls://host:port`` for TLS),
        and ``"option"``, ``"env"`` or ``"default"``.

    Raises:
        UsageError: ``GEARMAN_SERVERS`` is malformed.
    """
    if given is not None:
        return server_list(given, tls=tls), "option"
    env = os.environ if environ is None else environ
    value = env.get(SERVERS_ENV, "").strip()
    if value:
        try:
            return server_list(value, tls=tls), "env"
        except ValueError as exc:
            raise UsageError(f"{SERVERS_ENV}={value!r}: {exc}") from None
    return server_list(DEFAULT_SERVERS, tls=tls), "default"


# --- TLS ---------------------------------------------------------------------------------


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    """Add ``-S/--ssl``, ``--ssl-ca-file``, ``--ssl-certificate`` and ``--ssl-key``."""
    group = parser.add_argument_group(
        "TLS",
        "A server written tls://HOST:PORT is reached over TLS; these options make every "
        "server without a scheme TLS too (tcp://HOST:PORT stays plaintext). The server's "
        "certificate is verified and must name the host.",
    )
    group.add_argument(
        "-S",
        "--ssl",
        action="store_true",
        help="use TLS, verifying the servers against the system's CAs",
    )
    group.add_argument(
        "--ssl-ca-file",
        metavar="FILE",
        help="trust the CA certificates in FILE (PEM) instead of the system's; implies --ssl",
    )
    group.add_argument(
        "--ssl-certificate",
        metavar="FILE",
        help="present this client certificate (PEM), for servers that require one "
        "(mutual TLS); implies --ssl",
    )
    group.add_argument(
        "--ssl-key",
        metavar="FILE",
        help="the private key of --ssl-certificate (PEM), when it is not in that file",
    )


def tls_context(options: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context the options ask for, or ``None`` when they ask for none.

    Any of ``--ssl``, ``--ssl-ca-file`` and ``--ssl-certificate`` asks for one:
    :func:`ssl.create_default_context` (certificates and host names verified),
    trusting ``--ssl-ca-file`` if given, else the system's CAs, and presenting
    ``--ssl-certificate`` (with ``--ssl-key``) if given.

    Raises:
        UsageError: ``--ssl-key`` without ``--ssl-certificate``, or a file that
            cannot be read or holds no usable certificate or key.
    """
    ca_file: str | None = options.ssl_ca_file
    certificate: str | None = options.ssl_certificate
    key: str | None = options.ssl_key
    if key is not None and certificate is None:
        raise UsageError("--ssl-key needs --ssl-certificate")
    if not (options.ssl or ca_file or certificate):
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--ssl-ca-file {ca_file}: {_file_error(exc)}") from None
    if certificate is not None:
        try:
            context.load_cert_chain(certificate, key)
        except (OSError, ValueError) as exc:
            files = certificate if key is None else f"{certificate} / --ssl-key {key}"
            raise UsageError(f"--ssl-certificate {files}: {_file_error(exc)}") from None
    return context


def _file_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not a usable PEM file ({tls_error_text(exc)})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


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
