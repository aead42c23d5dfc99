"""``trio-gearman admin``: gearadmin's commands, with the same output, or JSON."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs

from .._client.admin import AdminClient
from .._exceptions import AdminError, ConnectFailed, GearmanError
from .._proto._admin import (
    format_priority_status,
    format_show_jobs,
    format_show_unique_jobs,
    format_status,
    format_workers,
)
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    UsageError,
    add_common_options,
    connect_failure,
    error,
    resolve_servers,
    tls_context,
    write_out,
)

__all__ = ["COMMANDS", "add_admin_parser", "run_admin"]

Rows = list[dict[str, object]]


def _text(value: bytes) -> str:
    return value.decode(errors="replace")


def _number(word: str) -> int:
    if not word.isdigit():
        raise UsageError(f"maxqueue: {word!r} is not a whole number (0 or more)")
    return int(word)


@attrs.frozen
class AdminCommand:
    """One admin subcommand: how to ask, and how to print the answer.

    Attributes:
        help: one line for ``--help``.
        arguments: the arguments it takes, for the usage text.
        counts: the numbers of arguments it accepts.
        request: asks the server, given the arguments.
        text: the answer as gearadmin prints it.
        rows: the answer as JSON objects (without the ``server`` field).
    """

    help: str
    request: Callable[[AdminClient, list[str]], Awaitable[Any]]
    text: Callable[[Any], bytes]
    rows: Callable[[Any], Rows]
    arguments: str = ""
    counts: tuple[int, ...] = (0,)


def _json_value(value: object) -> object:
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, (tuple, list)):
        return [_json_value(item) for item in value]
    return value


def _rows(rows: Sequence[Any]) -> Rows:
    """Typed admin rows (FunctionStatus, WorkerInfo, ...) as JSON objects, fields in order."""
    return [
        {field.name: _json_value(getattr(row, field.name)) for field in attrs.fields(type(row))}
        for row in rows
    ]


def _ok(_: object) -> bytes:
    return b"OK\n"


def _ok_rows(_: object) -> Rows:
    return [{"result": "OK"}]


async def _maxqueue(admin: AdminClient, args: list[str]) -> None:
    function, numbers = os.fsencode(args[0]), [_number(word) for word in args[1:]]
    if not numbers:
        await admin.maxqueue(function)
    elif len(numbers) == 1:
        await admin.maxqueue(function, numbers[0])
    else:
        await admin.maxqueue(function, (numbers[0], numbers[1], numbers[2]))


COMMANDS: Final[dict[str, AdminCommand]] = {
    "status": AdminCommand(
        "per function: jobs queued or running, jobs running, workers",
        lambda admin, _: admin.status(),
        format_status,
        _rows,
    ),
    "priority-status": AdminCommand(
        "per function: jobs waiting at high, normal and low priority, workers",
        lambda admin, _: admin.priority_status(),
        format_priority_status,
        _rows,
    ),
    "workers": AdminCommand(
        "every connection: fd, address, client id and functions",
        lambda admin, _: admin.workers(),
        format_workers,
        _rows,
    ),
    "show-jobs": AdminCommand(
        "every job: handle, retries, ignore and queued flags",
        lambda admin, _: admin.show_jobs(),
        format_show_jobs,
        _rows,
    ),
    "show-unique-jobs": AdminCommand(
        "every job's unique key (an empty line for a job without one)",
        lambda admin, _: admin.show_unique_jobs(),
        format_show_unique_jobs,
        lambda uniques: [{"unique": _text(u)} for u in uniques],
    ),
    "version": AdminCommand(
        "the server's version",
        lambda admin, _: admin.version(),
        lambda version: version.encode() + b"\n",
        lambda version: [{"version": version}],
    ),
    "getpid": AdminCommand(
        "the server's process id",
        lambda admin, _: admin.getpid(),
        lambda pid: b"%d\n" % pid,
        lambda pid: [{"pid": pid}],
    ),
    "verbose": AdminCommand(
        "the server's log level",
        lambda admin, _: admin.verbose(),
        lambda level: level.encode() + b"\n",
        lambda level: [{"verbose": level}],
    ),
    "cancel-job": AdminCommand(
        "cancel a queued job (its clients get WORK_FAIL)",
        lambda admin, args: admin.cancel_job(os.fsencode(args[0])),
        _ok,
        _ok_rows,
        "HANDLE",
        (1,),
    ),
    "create-function": AdminCommand(
        "make a function known to the server",
        lambda admin, args: admin.create_function(os.fsencode(args[0])),
        _ok,
        _ok_rows,
        "FUNCTION",
        (1,),
    ),
    "drop-function": AdminCommand(
        "make the server forget a function without workers or running jobs",
        lambda admin, args: admin.drop_function(os.fsencode(args[0])),
        _ok,
        _ok_rows,
        "FUNCTION",
        (1,),
    ),
    "maxqueue": AdminCommand(
        "limit the jobs a function may hold: N for every priority, or one per priority "
        "(0 or none: no limit)",
        _maxqueue,
        _ok,
        _ok_rows,
        "FUNCTION [N | HIGH NORMAL LOW]",
        (1, 2, 4),
    ),
}


def _epilog() -> str:
    lines = ["commands:"]
    for name, spec in COMMANDS.items():
        lines.append(f"  {name} {spec.arguments}".rstrip())
        lines.extend(
            textwrap.wrap(spec.help, 76, initial_indent=" " * 6, subsequent_indent=" " * 6)
        )
    lines += [
        "",
        "Text output is gearadmin's (tab-separated columns, listings end with '.');",
        "--json prints a list of objects, one per row, each naming its server. With",
        "several servers the command goes to each in turn. An ERR answer is reported",
        "on stderr (exit status 1); no server reachable: exit status 3.",
    ]
    return "\n".join(lines)


def add_admin_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``admin`` subcommand."""
    parser = commands.add_parser(
        "admin",
        help="query and steer job servers (gearadmin's commands), in text or JSON",
        description="Send an admin command to the job servers and print the answer.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", metavar="COMMAND", choices=list(COMMANDS), help="see the list below"
    )
    parser.add_argument("arguments", metavar="ARG", nargs="*", help="the command's arguments")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_common_options(parser)
    parser.set_defaults(run=run_admin, parser=parser)


def _check_arguments(name: str, spec: AdminCommand, arguments: Sequence[str]) -> None:
    if len(arguments) in spec.counts:
        return
    usage = f"{name} {spec.arguments}".rstrip()
    if spec.counts == (0,):
        raise UsageError(f"{name} takes no arguments")
    raise UsageError(f"expected: admin {usage}")


async def _ask(
    server: str, spec: AdminCommand, arguments: list[str], context: ssl.SSLContext | None
) -> Any:
    async with AdminClient(server, ssl_context=context) as admin:
        return await spec.request(admin, arguments)


async def run_admin(options: argparse.Namespace) -> int:
    """Run ``admin``; return the exit status."""
    name: str = options.command
    spec = COMMANDS[name]
    _check_arguments(name, spec, options.arguments)
    if name == "maxqueue":
        for word in options.arguments[1:]:
            _number(word)
    context = tls_context(options)
    servers, _ = resolve_servers(options.servers, tls=context is not None)
    answers: list[tuple[str, Any]] = []
    failures: list[GearmanError] = []
    unreachable: list[ConnectFailed] = []
    for server in servers:
        try:
            answers.append((server, await _ask(server, spec, options.arguments, context)))
        except ConnectFailed as exc:
            unreachable.append(exc)
        except GearmanError as exc:
            failures.append(exc)
    if name == "cancel-job" and answers:
        # A handle belongs to one server: the others do not know it.
        failures = [
            f for f in failures if not (isinstance(f, AdminError) and f.code == "UNKNOWN_JOB")
        ]
    if len(unreachable) == len(servers):
        reasons = "; ".join(connect_failure(unreached) for unreached in unreachable)
        error(f"no Gearman server could be reached: {reasons}")
        return EXIT_UNREACHABLE
    if options.json:
        rows = [{"server": server, **row} for server, value in answers for row in spec.rows(value)]
        write_out(json.dumps(rows, indent=2).encode() + b"\n")
    else:
        for server, value in answers:
            if len(servers) > 1:
                write_out(f"==> {server} <==\n".encode())
            write_out(spec.text(value))
    for unreached in unreachable:
        error(connect_failure(unreached))
    for failure in failures:
        error(str(failure))
    return EXIT_FAILED if unreachable or failures else EXIT_OK
