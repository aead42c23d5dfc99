"""The ``trio-gearmand`` command: run a job server in the foreground.

It takes gearmand's options where they apply, logs to stderr by default (as a
systemd service wants), stops at once on SIGINT/SIGTERM and drains on SIGUSR1: new
connections are refused, running jobs may finish within ``--graceful-timeout``.
With ``-q libsqlite3`` background jobs are kept in a SQLite file and queued again
when the server starts, before it listens.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import logging.handlers
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final, NoReturn

import anyio

from .._address import DEFAULT_PORT
from .._exceptions import GearmanError
from .._proto import COMPILED
from .._proto.server.state import ServerConfig
from .._server.server import GearmanServer, startup_logger
from .._server.sockets import KeepAlive, ListenFailed
from .._server.store import QueueStore, SqliteStore
from .._server.store.sqlite import DEFAULT_TABLE
from .._server.tls import DEFAULT_HANDSHAKE_TIMEOUT
from .._version import __version__
from .http import MONITOR_EXTRA, missing_library
from .options import UsageError, leaves, seconds
from .server_acl import acl_arguments, add_acl_options, check_acl_options
from .server_cluster import add_cluster_options, check_cluster_options, make_cluster_store
from .server_limits import add_limit_options, limit_arguments
from .server_limits_state import add_state_limit_options, state_limits
from .server_tls import add_tls_options, check_tls_options, tls_context

__all__ = ["main"]

logger = logging.getLogger("trio_gearman.server")

DEFAULT_GRACEFUL_TIMEOUT: Final = 30.0

# gearmand's verbose levels and the logging levels they map to.
LEVELS: Final = {
    "FATAL": logging.CRITICAL,
    "ALERT": logging.CRITICAL,
    "CRITICAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "NOTICE": 25,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
}
_LEVEL_NAMES: Final = {
    logging.CRITICAL: "FATAL",
    logging.ERROR: "ERROR",
    logging.WARNING: "WARNING",
    25: "NOTICE",
    logging.INFO: "INFO",
    logging.DEBUG: "DEBUG",
}
_QUEUE_NAMES: Final = {
    "memory": "memory",
    "builtin": "memory",
    "sqlite": "sqlite",
    "libsqlite3": "sqlite",
    "postgres": "postgres",
    "postgresql": "postgres",
    "libpq": "postgres",
}
"""Queue types by every name they go by (gearmand's spellings too), lowercased."""
_UNSUPPORTED: Final = ("mysql", "libdrizzle", "redis", "hiredis", "libmemcached", "tokyocabinet")


# --- option values ---------------------------------------------------------------------------


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    parse.__name__ = "number"
    return parse


def _port(text: str) -> int:
    value = _int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535)")
    return value


def _level(text: str) -> str:
    name = text.upper()
    if name not in LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LEVELS)}")
    return name


def _queue_type(text: str) -> str:
    name = _QUEUE_NAMES.get(text.lower())
    if name is not None:
        return name
    if text.lower() in _UNSUPPORTED:
        raise argparse.ArgumentTypeError(
            f"queue type {text!r} is not supported; 'memory', 'sqlite' and 'postgres' are available"
        )
    raise argparse.ArgumentTypeError(
        f"unknown queue type {text!r}; 'memory', 'sqlite' and 'postgres' are available"
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="trio-gearmand",
        description="A Gearman job server, compatible with gearmand 1.1 on the wire. "
        "It runs in the foreground and logs to stderr.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add(
        "-p",
        "--port",
        type=_port,
        help=f"port to listen on (default {DEFAULT_PORT}, or GEARMAND_PORT from the environment)",
    )
    add(
        "-L",
        "--listen",
        action="append",
        metavar="ADDRESS",
        help="address to listen on; repeat for several (default: every address)",
    )
    add("-b", "--backlog", type=_int_at_least(1), default=32, help="listen() backlog (default 32)")
    add(
        "-j",
        "--job-retries",
        type=_int_at_least(0),
        default=0,
        help="attempts before a job whose workers keep dying is failed (default 0: no limit)",
    )
    add(
        "--job-handle-prefix",
        metavar="PREFIX",
        help="job handles are PREFIX:N (default H:<host name>)",
    )
    add("--exceptions", action="store_true", help="enable WORK_EXCEPTION for every connection")
    add(
        "-w",
        "--worker-wakeup",
        type=_int_at_least(0),
        default=0,
        help="sleeping workers woken per queued job (default 0: all)",
    )
    add(
        "-l",
        "--log-file",
        default="stderr",
        metavar="FILE",
        help="'stderr' (default), 'none', or a file to append to",
    )
    add(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="'text' (gearmand's line format, the default) or 'json': one JSON object "
        "a line, with 'time', 'level', 'logger', 'message' and, where the line is about "
        "one, 'peer', 'handle' and 'function'",
    )
    add(
        "--verbose",
        type=_level,
        default="ERROR",
        metavar="LEVEL",
        help=f"log level: {', '.join(LEVELS)} (default ERROR)",
    )
    add("-P", "--pid-file", metavar="FILE", help="write the process id to FILE")
    add("--keepalive", action="store_true", help="enable TCP keepalive on connections")
    add(
        "--keepalive-idle",
        type=int,
        default=-1,
        metavar="SECONDS",
        help="TCP_KEEPIDLE with --keepalive (-1: system default)",
    )
    add(
        "--keepalive-interval",
        type=int,
        default=-1,
        metavar="SECONDS",
        help="TCP_KEEPINTVL with --keepalive (-1: system default)",
    )
    add(
        "--keepalive-count",
        type=int,
        default=-1,
        metavar="N",
        help="TCP_KEEPCNT with --keepalive (-1: system default)",
    )
    add(
        "-R",
        "--round-robin",
        action="store_true",
        help="accepted for compatibility: work is always assigned round robin",
    )
    add(
        "-t",
        "--threads",
        type=_int_at_least(0),
        default=0,
        help="accepted for compatibility: one event loop serves every connection",
    )
    add(
        "-f",
        "--file-descriptors",
        type=_int_at_least(1),
        metavar="N",
        help="open-file limit to set (default: the hard limit)",
    )
    add(
        "-q",
        "--queue-type",
        type=_queue_type,
        help="where background jobs are kept: 'memory' (lost when the server stops; "
        "the default), 'sqlite' (a file; alias 'libsqlite3') or 'postgres' (a "
        "PostgreSQL database; aliases 'Postgres', 'libpq'; needs the 'postgres' extra). "
        "--sqlite-db or --postgres-dsn alone implies its type",
    )
    add(
        "--sqlite-db",
        "--libsqlite3-db",
        dest="sqlite_db",
        metavar="PATH",
        help="with -q sqlite: the database file (created if missing)",
    )
    add(
        "--sqlite-table",
        "--libsqlite3-table",
        dest="sqlite_table",
        metavar="NAME",
        help=f"with -q sqlite: the table of jobs (default {DEFAULT_TABLE})",
    )
    add(
        "--postgres-dsn",
        "--libpq-conninfo",
        dest="postgres_dsn",
        metavar="DSN",
        help="with -q postgres: the connection string, e.g. "
        "'host=db dbname=gearman user=gearman' or 'postgresql://gearman@db/gearman' "
        "(a password is better kept in ~/.pgpass or $PGPASSWORD)",
    )
    add(
        "--postgres-table",
        "--libpq-table",
        dest="postgres_table",
        metavar="NAME",
        help=f"with -q postgres: the table of jobs (default {DEFAULT_TABLE})",
    )
    add(
        "--store-queue-on-shutdown",
        action="store_true",
        help="with a persistent queue, accepted for compatibility: the queue is "
        "written as jobs are submitted, so it is always current",
    )
    add(
        "--http-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (needs the 'monitor' "
        "extra; 0: a free port; default: no HTTP port)",
    )
    add(
        "--http-listen",
        default="127.0.0.1",
        metavar="ADDR",
        help="the address of --http-port (default 127.0.0.1: the metrics tell who runs "
        "what; open them wider on purpose)",
    )
    add(
        "--graceful-timeout",
        type=seconds(zero=True),
        default=DEFAULT_GRACEFUL_TIMEOUT,
        metavar="SECONDS",
        help="on SIGUSR1, how long running jobs may take to finish "
        f"(default {DEFAULT_GRACEFUL_TIMEOUT:g})",
    )
    add(
        "--config-file",
        metavar="FILE",
        help="read options from FILE (gearmand's format: --option=value tokens); '@FILE' works too",
    )
    add_state_limit_options(parser)
    add_limit_options(parser)
    build = "compiled with mypyc" if COMPILED else "pure Python"
    add("-V", "--version", action="version", version=f"%(prog)s {__version__} ({build})")
    add_acl_options(parser)
    add_cluster_options(parser)
    add_tls_options(parser)
    return parser


def _expand_config_files(argv: Sequence[str]) -> list[str]:
    """Put the tokens of ``--config-file``/``@file`` before the command line's options.

    The command line wins over the file for single-valued options, as in gearmand.
    """
    files: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--config-file":
            path = next(args, None)
            if path is None:
                raise UsageError("argument --config-file: expected one argument")
            files.append(path)
        elif arg.startswith("--config-file="):
            files.append(arg.partition("=")[2])
        elif arg.startswith("@") and len(arg) > 1:
            files.append(arg[1:])
        else:
            rest.append(arg)
    tokens: list[str] = []
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read the config file {path!r}: {exc.strerror}") from None
        for line in text.replace("\r", "\n").split("\n"):
            if line.lstrip().startswith("#"):
                continue
            for token in line.split():
                if token.startswith(("--config-file", "@")):
                    raise UsageError(f"{path}: config files cannot include other config files")
                tokens.append(token)
    return tokens + rest


def parse_options(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """Parse the command line (and config files) into options.

    Args:
        argv: the arguments after the program name.
        environ: the environment (for ``GEARMAND_PORT``); default ``os.environ``.

    Returns:
        The options, with the port and the job handle prefix filled in.

    Raises:
        UsageError: a bad option or value.
        SystemExit: ``--help`` or ``--version`` was given (status 0).
    """
    options = _parser().parse_args(_expand_config_files(argv))
    env = os.environ if environ is None else environ
    if options.port is None:
        value = env.get("GEARMAND_PORT")
        try:
            options.port = _port(value) if value else DEFAULT_PORT
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"GEARMAND_PORT: {exc}") from None
    if options.job_handle_prefix is None:
        options.job_handle_prefix = "H:" + socket.gethostname()
    if not options.job_handle_prefix:
        raise UsageError("argument --job-handle-prefix: must not be empty")
    if options.queue_type is None:
        if options.sqlite_db and options.postgres_dsn:
            raise UsageError("--sqlite-db and --postgres-dsn: choose one with --queue-type")
        options.queue_type = (
            "sqlite" if options.sqlite_db else "postgres" if options.postgres_dsn else "memory"
        )
    queue = options.queue_type
    if queue == "sqlite" and not options.sqlite_db:
        raise UsageError("--queue-type sqlite needs --sqlite-db PATH")
    if queue == "postgres" and not options.postgres_dsn:
        raise UsageError("--queue-type postgres needs --postgres-dsn DSN")
    for given, name, needs in (
        (options.sqlite_db, "--sqlite-db", "sqlite"),
        (options.sqlite_table, "--sqlite-table", "sqlite"),
        (options.postgres_dsn, "--postgres-dsn", "postgres"),
        (options.postgres_table, "--postgres-table", "postgres"),
        (options.store_queue_on_shutdown, "--store-queue-on-shutdown", queue),
    ):
        if given and (queue != needs or queue == "memory"):
            raise UsageError(
                f"{name} needs --queue-type {needs if needs != 'memory' else 'sqlite or postgres'}"
                + (" (there is no queue to store)" if queue == "memory" else "")
            )
    options.sqlite_table = options.sqlite_table or DEFAULT_TABLE
    options.postgres_table = options.postgres_table or DEFAULT_TABLE
    check_acl_options(options)
    check_cluster_options(options)
    check_tls_options(options, env)
    return options


# --- logging -----------------------------------------------------------------------------


class _Formatter(logging.Formatter):
    """gearmand's log line: ``   INFO 2024-01-31 12:00:00.123456 [  main ] message``."""

    def format(self, record: logging.LogRecord) -> str:
        level = _LEVEL_NAMES.get(record.levelno, record.levelname)
        stamp = datetime.datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S.%f")
        line = f"{level:>7} {stamp} [  main ] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_JSON_FIELDS: Final = ("peer", "handle", "function")
"""Attributes a log record may carry (``extra=``) that a JSON line includes."""


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: for log collectors (``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line: dict[str, object] = {
            "time": stamp.isoformat(timespec="microseconds"),
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _JSON_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = (
                    value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def _setup_logging(log_file: str, level: str, log_format: str = "text") -> None:
    """Send the package's log to stderr, to a file or nowhere, in gearmand's format.

    Raises:
        OSError: the log file cannot be opened.
    """
    handler: logging.Handler
    if log_file.lower() == "none":
        handler = logging.NullHandler()
    elif log_file.lower() == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.handlers.WatchedFileHandler(log_file)
    handler.setFormatter(_JsonFormatter() if log_format == "json" else _Formatter())
    package_logger = logging.getLogger("trio_gearman")
    for old in package_logger.handlers:
        if isinstance(old.formatter, (_Formatter, _JsonFormatter)):
            old.close()
    package_logger.handlers[:] = [handler]
    package_logger.setLevel(LEVELS[level])
    package_logger.propagate = False
    # Where it listens and which queue it uses are said at every level but FATAL (as a
    # person starting a server expects to see them).
    startup = logging.INFO if LEVELS[level] < logging.CRITICAL else logging.CRITICAL
    startup_logger.setLevel(min(startup, LEVELS[level]))


# --- running -------------------------------------------------------------------------------


def _make_store(options: argparse.Namespace) -> QueueStore | None:
    """The store that ``-q`` names, or ``None`` for the in-memory queue.

    Raises:
        UsageError: a table name is not a plain SQL name.
        StoreError: the store cannot be used (e.g. its extra is not installed).
    """
    if options.cluster is not None:
        return make_cluster_store(options)
    try:
        if options.queue_type == "sqlite":
            return SqliteStore(options.sqlite_db, options.sqlite_table)
        if options.queue_type == "postgres":
            from .._server.store.postgres import PostgresStore

            return PostgresStore(options.postgres_dsn, options.postgres_table)
    except ValueError as exc:
        raise UsageError(f"argument --{options.queue_type}-table: {exc}") from None
    return None


async def _serve(
    server: GearmanServer, graceful_timeout: float, http: tuple[str, int] | None = None
) -> None:
    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP]
    with anyio.open_signal_receiver(*signals) as received:
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            if http is not None:
                from .http import serve_http

                address = await tg.start(serve_http, server, *http)
                startup_logger.info("Metrics on http://%s/metrics", address)
            if server.store is None:
                startup_logger.info("Queue: in memory (background jobs are lost when it stops)")

            async def drain() -> None:
                logger.info("Draining: running jobs may take %g s to finish", graceful_timeout)
                if not await server.drain(graceful_timeout):
                    logger.warning(
                        "%d jobs were still running after %g s",
                        server.state.jobs_running,
                        graceful_timeout,
                    )
                tg.cancel_scope.cancel()

            draining = False
            async for signum in received:
                if signum == signal.SIGUSR1:
                    if not draining:
                        draining = True
                        tg.start_soon(drain)
                elif signum == signal.SIGHUP:
                    logger.info("SIGHUP: log files are reopened when they move")
                else:
                    logger.info("Received %s, shutting down", signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    break


def _fatal(message: str, log_file: str) -> None:
    """Report why the server cannot run: on stderr, and in the log file if there is one."""
    if log_file.lower() not in ("stderr", "none"):
        logger.critical("%s", message)
    print(f"trio-gearmand: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trio-gearmand``.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 after a clean stop, 1 when the server could not run,
        2 for a bad command line.
    """
    try:
        options = parse_options(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"trio-gearmand: error: {exc} (see trio-gearmand --help)", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        _setup_logging(options.log_file, options.verbose, options.log_format)
    except OSError as exc:
        print(f"trio-gearmand: cannot open the log file: {exc}", file=sys.stderr)
        return 1
    try:
        ssl_context = tls_context(options)
        store = _make_store(options)
    except UsageError as exc:
        print(f"trio-gearmand: error: {exc} (see trio-gearmand --help)", file=sys.stderr)
        return 2
    except GearmanError as exc:
        _fatal(str(exc), options.log_file)
        return 1
    http = None
    if options.http_port is not None:
        missing = missing_library()
        if missing is not None:
            _fatal(f"--http-port: {missing} is missing; {MONITOR_EXTRA}", options.log_file)
            return 1
        http = (options.http_listen, options.http_port)
    if options.store_queue_on_shutdown:
        logger.info(
            "--store-queue-on-shutdown: nothing to do, "
            "every background job is stored when it is submitted"
        )
    config = ServerConfig(
        job_handle_prefix=options.job_handle_prefix.encode(),
        exceptions=options.exceptions,
        job_retries=options.job_retries,
        worker_wakeup=options.worker_wakeup,
        version=__version__.encode(),
        pid=os.getpid(),
        verbose=options.verbose.encode(),
        metrics=options.http_port is not None,
        **state_limits(options),
    )
    keepalive = None
    if options.keepalive:
        keepalive = KeepAlive(
            idle=options.keepalive_idle if options.keepalive_idle > 0 else None,
            interval=options.keepalive_interval if options.keepalive_interval > 0 else None,
            count=options.keepalive_count if options.keepalive_count > 0 else None,
        )
    hosts: list[str | None] = list(options.listen) if options.listen else [None]
    server = GearmanServer(
        config,
        [(host, options.port) for host in hosts],
        backlog=options.backlog,
        keepalive=keepalive,
        fd_limit=options.file_descriptors,
        store=store,
        **acl_arguments(options),
        ssl_context=ssl_context,
        ssl_handshake_timeout=options.ssl_handshake_timeout or DEFAULT_HANDSHAKE_TIMEOUT,
        **limit_arguments(options),
    )
    if options.acl is not None:
        startup_logger.info("Access rules: %d from %s", len(options.acl.rules), options.acl_file)
    pid_file = Path(options.pid_file) if options.pid_file else None
    try:
        if pid_file is not None:
            pid_file.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        _fatal(f"cannot write the pid file: {exc}", options.log_file)
        return 1
    logger.info("Starting up with pid %d, verbose is set to %s", os.getpid(), options.verbose)
    try:
        anyio.run(_serve, server, options.graceful_timeout, http, backend="trio")
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        failed = next((e for e in leaves(exc) if isinstance(e, GearmanError)), None)
        if failed is not None:
            _fatal(str(failed), options.log_file)
            return 1
        error = next((e for e in leaves(exc) if isinstance(e, OSError)), None)
        if error is None or server.addresses:
            raise
        if isinstance(error, ListenFailed):
            which = f" (--listen {error.host})" if error.host is not None else ""
            _fatal(f"{error}{which}", options.log_file)
        else:
            _fatal(f"cannot listen: {error}", options.log_file)
        return 1
    finally:
        if pid_file is not None:
            try:
                if pid_file.read_text().strip() == str(os.getpid()):
                    pid_file.unlink()
            except OSError:
                pass
    logger.info("Shutdown complete")
    return 0
