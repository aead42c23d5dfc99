"""``trio-gearman submit`` and ``trio-gearman status``: the client side of the command."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from typing import Final

import anyio
import anyio.to_thread

from .._client.admin import AdminClient
from .._client.client import Client
from .._client.job import JobHandle, JobStatus
from .._exceptions import GearmanError
from .._proto import Priority, WorkData, WorkStatus, WorkWarning
from .common import (
    add_common_options,
    error,
    resolve_servers,
    tls_context,
    write_err,
    write_out,
)

__all__ = ["add_status_parser", "add_submit_parser", "run_status", "run_submit"]

PRIORITIES: Final = {"high": Priority.HIGH, "normal": Priority.NORMAL, "low": Priority.LOW}

_SUBMIT_HELP = """\
Submit a job and print its result on stdout, byte for byte. The data comes from
the DATA argument, or from stdin when DATA is '-' or left out. While a foreground
job runs, the data chunks its worker streams (WORK_DATA) are written to stdout as
they arrive, and its warnings (WORK_WARNING) to stderr; --verbose also reports its
progress (WORK_STATUS). A background job's handle is printed instead.
"""

_STATUS_HELP = """\
Ask the job servers about a job (GET_STATUS, or GET_STATUS_UNIQUE with --unique)
and print HANDLE, KNOWN, RUNNING, NUMERATOR and DENOMINATOR, tab-separated (KNOWN
and RUNNING as 1 or 0; with --unique, the unique key comes first and CLIENTS,
the foreground clients waiting for the job, last). A handle is asked of every
server; the one that knows the job answers.
"""


def add_submit_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``submit`` subcommand."""
    parser = commands.add_parser(
        "submit",
        help="submit a job; print its result (or its handle, in the background)",
        description=_SUBMIT_HELP,
    )
    parser.add_argument("function", metavar="FUNCTION", help="the function to run")
    parser.add_argument(
        "data", metavar="DATA", nargs="?", default="-", help="the job's data ('-': stdin)"
    )
    parser.add_argument(
        "-b",
        "--background",
        action="store_true",
        help="queue a background job and print its handle",
    )
    parser.add_argument(
        "--priority", choices=list(PRIORITIES), default="normal", help="default: normal"
    )
    parser.add_argument(
        "--unique",
        metavar="KEY",
        help="unique key (at most 64 bytes): jobs with the same function and key run once",
    )
    add_common_options(parser)
    parser.set_defaults(run=run_submit, parser=parser)


def add_status_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``status`` subcommand."""
    parser = commands.add_parser(
        "status",
        help="ask the job servers about a job by handle (or by unique key)",
        description=_STATUS_HELP,
    )
    parser.add_argument("handle", metavar="HANDLE", help="the job's handle (or unique key)")
    parser.add_argument(
        "--unique", action="store_true", help="HANDLE is the job's unique key (GET_STATUS_UNIQUE)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    add_common_options(parser)
    parser.set_defaults(run=run_status, parser=parser)


async def _read_data(argument: str) -> bytes:
    if argument != "-":
        return os.fsencode(argument)
    return await anyio.to_thread.run_sync(sys.stdin.buffer.read)


async def run_submit(options: argparse.Namespace) -> int:
    """Run ``submit``; return the exit status (errors are raised)."""
    context = tls_context(options)
    data = await _read_data(options.data)
    servers, _ = resolve_servers(options.servers, tls=context is not None)
    priority = PRIORITIES[options.priority]
    function = os.fsencode(options.function)
    unique = None if options.unique is None else os.fsencode(options.unique)
    # A one-shot command fails at once when no server answered its first attempt.
    async with Client(servers, wait_for_server=0, ssl_context=context) as client:
        if options.background:
            handle = await client.submit_background(
                function, data, priority=priority, unique=unique
            )
            if options.verbose:
                error(f"job {handle} queued on {handle.server}")
            write_out(handle.handle + b"\n")
            return 0
        async with client.submit_job(function, data, priority=priority, unique=unique) as job:
            if options.verbose:
                error(f"job {job.handle} accepted by {job.handle.server}")
            if options.timeout and job.handle.server:
                options.timeout_hint = await _no_worker_hint(job.handle.server, function, context)
            async for update in job:
                if isinstance(update, WorkData):
                    write_out(update.data)
                elif isinstance(update, WorkWarning):
                    write_err(update.data)
                elif isinstance(update, WorkStatus) and options.verbose:
                    error(f"job {job.handle}: {update.numerator}/{update.denominator}")
            result = job.result
        write_out(result)
    return 0


async def _no_worker_hint(
    server: str, function: bytes, context: ssl.SSLContext | None
) -> str | None:
    """What to add to "timed out" when ``server`` has no worker for ``function``."""
    try:
        async with AdminClient(server, ssl_context=context) as admin:
            rows = await admin.status()
    except GearmanError:
        return None  # no hint then; the job itself goes on
    if any(row.function == function and row.workers for row in rows):
        return None
    name = function.decode(errors="replace")
    return f"no worker has registered {name!r} on {server}; the job waits in its queue"


def _status_row(key: bytes, status: JobStatus, *, by_unique: bool) -> bytes:
    fields = [key, b"%d" % status.known, b"%d" % status.running]
    fields += [b"%d" % status.numerator, b"%d" % status.denominator]
    if by_unique:
        fields.append(b"%d" % (status.clients or 0))
    return b"\t".join(fields) + b"\n"


def _status_json(key: bytes, server: str | None, status: JobStatus, *, by_unique: bool) -> bytes:
    text = key.decode(errors="replace")
    value: dict[str, object] = {"unique": text} if by_unique else {"handle": text}
    value["server"] = server
    value.update(
        known=status.known,
        running=status.running,
        numerator=status.numerator,
        denominator=status.denominator,
    )
    if by_unique:
        value["clients"] = status.clients or 0
    return json.dumps(value).encode() + b"\n"


async def _status_by_handle(client: Client[bytes], handle: bytes) -> tuple[str, JobStatus]:
    """Ask every server about the handle at once; the first (in order) that knows it wins."""
    servers = client.addresses
    answers: dict[str, JobStatus | GearmanError] = {}

    async def ask(server: str) -> None:
        try:
            answers[server] = await client.get_status(JobHandle(handle, server))
        except GearmanError as exc:
            answers[server] = exc

    async with anyio.create_task_group() as tg:
        for server in servers:
            tg.start_soon(ask, server)
    unknown: tuple[str, JobStatus] | None = None
    for server in servers:
        answer = answers[server]
        if isinstance(answer, JobStatus):
            if answer.known:
                return server, answer
            unknown = unknown or (server, answer)
    if unknown is not None:
        return unknown
    failure = answers[servers[0]]
    assert isinstance(failure, GearmanError)
    raise failure


async def run_status(options: argparse.Namespace) -> int:
    """Run ``status``; return the exit status (errors are raised)."""
    context = tls_context(options)
    servers, _ = resolve_servers(options.servers, tls=context is not None)
    key = os.fsencode(options.handle)
    # A one-shot command fails at once when no server answered its first attempt.
    async with Client(servers, wait_for_server=0, ssl_context=context) as client:
        server: str | None
        if options.unique:
            status = await client.get_status_unique(key)
            server = None
        else:
            server, status = await _status_by_handle(client, key)
    if options.json:
        write_out(_status_json(key, server, status, by_unique=options.unique))
    else:
        write_out(_status_row(key, status, by_unique=options.unique))
    return 0
