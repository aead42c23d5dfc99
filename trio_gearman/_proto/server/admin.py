"""The job server's answers to admin text commands.

A :class:`~trio_gearman._proto.TextLine` from any connection is parsed with
:func:`._admin.parse_command` and answered with gearmand 1.1.20's exact bytes
(:mod:`._admin` formats them). Pipelined commands are simply successive lines.

Where we differ from gearmand:

* ``drop function`` is refused while the function has any job (queued, future or
  running) or a registered worker; gearmand drops a function with queued jobs and
  orphans them.
* ``shutdown`` gets gearmand's ``ERR UNKNOWN_COMMAND`` (it is unauthenticated);
  signals stop the server.
* A line of more than five words gets ``ERR TOO_MANY_ARGS`` before the connection
  closes (gearmand closes without a word).
* The commands that change the server (``cancel job``, ``create function``,
  ``drop function``, ``maxqueue``, ``shutdown``) get ``ERR PERMISSION_DENIED``
  when the connection's grant does not allow them (by default: from a peer that
  is not on the loopback); the commands that only read are open to everybody.
* A listing of more than one slice is produced a slice at a time (see
  :mod:`.listing`): the rows are a snapshot taken when the command arrives, each
  formatted when its slice is made.
* On a cluster member with a :class:`~.cluster.ClusterView`, ``status``,
  ``prioritystatus`` and ``show jobs`` list the cluster's background jobs too:
  the view's counts are added to this member's (the jobs other members hold
  count as running), its functions without a job or worker here are listed
  after the others, and its handles after this member's jobs. ``workers`` and
  ``show unique jobs`` stay this member's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from ..._exceptions import TooManyAdminArguments
from .._admin import (
    DROP_FUNCTION_BUSY,
    DROP_FUNCTION_NOT_FOUND,
    UNKNOWN_JOB,
    AdminErrorReply,
    CancelJob,
    CreateFunction,
    DropFunction,
    GetPid,
    MaxQueue,
    PriorityStatus,
    ShowJobs,
    ShowUniqueJobs,
    Shutdown,
    Status,
    Verbose,
    Version,
    Workers,
    format_error,
    format_error_reply,
    format_getpid,
    format_ok,
    format_verbose,
    format_version,
    parse_command,
    priority_status_line,
    show_jobs_line,
    status_line,
    workers_line,
)
from .cluster import ClusterCounts
from .jobs import JobTable
from .listing import Listing
from .model import GONE, ConnectionState, Function, Job
from .names import function_name_error

__all__ = ["AdminHandler"]

_TOO_MANY_ARGS: Final = format_error(b"TOO_MANY_ARGS", b"Too many arguments")

MUTATING_COMMANDS: Final[dict[type[Any], bytes]] = {
    CancelJob: b"cancel job",
    CreateFunction: b"create function",
    DropFunction: b"drop function",
    MaxQueue: b"maxqueue",
    Shutdown: b"shutdown",
}
"""The admin commands that change the server (access control), with their names."""


def _ignored(job: Job) -> bool:
    """Whether ``show jobs`` flags the job as ignored: cancelled, or abandoned."""
    return job.cancelled or (not job.background and job.clients is None)


class AdminHandler:
    """Answers admin commands from the state of one server.

    Args:
        state: the server's functions and jobs, which commands report and change.
        connections: a live view of the server's open connections (``workers``).
        deny: asked before a command of :data:`MUTATING_COMMANDS` runs, with the
            connection and the line: ``True`` refuses it (``ERR
            PERMISSION_DENIED``). ``None``: every command runs.
    """

    def __init__(
        self,
        state: JobTable,
        connections: Iterable[ConnectionState],
        *,
        deny: Callable[[ConnectionState, bytes], bool] | None = None,
    ) -> None:
        self._state = state
        self._connections = connections
        self._deny = deny
        self._listings: dict[type[Any], Callable[[], Listing[Any]]] = {
            Status: self._status,
            PriorityStatus: self._priority_status,
            Workers: self._workers,
            ShowJobs: self._show_jobs,
            ShowUniqueJobs: self._show_unique_jobs,
        }
        self._handlers: dict[type[Any], Callable[[Any], bytes]] = {
            CancelJob: self._cancel_job,
            CreateFunction: self._create_function,
            DropFunction: self._drop_function,
            MaxQueue: self._max_queue,
            Version: self._version,
            GetPid: self._getpid,
            Verbose: self._verbose,
            Shutdown: self._shutdown,
            AdminErrorReply: format_error_reply,
        }

    def receive(self, conn: ConnectionState, line: bytes) -> None:
        """Answer one admin line from ``conn``.

        A line with too many words gets an ``ERR`` line and marks the connection
        closing. A listing longer than one slice sends its first slice and leaves
        the rest in :attr:`ConnectionState.listing`
        (see :meth:`~.state.ServerState.continue_listing`).
        """
        state = self._state
        try:
            command = parse_command(line)
        except TooManyAdminArguments:
            conn.outgoing += _TOO_MANY_ARGS
            conn.closing = True
        else:
            kind = type(command)
            name = MUTATING_COMMANDS.get(kind)
            listing = self._listings.get(kind)
            if name is not None and self._deny is not None and self._deny(conn, line[:256]):
                conn.outgoing += format_error(
                    b"PERMISSION_DENIED", b"not allowed to run " + name + b" from this peer"
                )
            elif listing is None:
                conn.outgoing += self._handlers[kind](command)
            else:
                rows = listing()
                chunk, done = rows.next_slice()
                conn.outgoing += chunk
                if not done:
                    conn.listing = rows
        state.dirty.add(conn)

    # --- listings: a snapshot of the rows, each formatted when its slice is -----------------

    def _live_function(self, function: Function) -> bool:
        return self._state.get_function(function.name) is function

    def _function_rows(self) -> tuple[list[Function | bytes], dict[bytes, ClusterCounts]]:
        """The functions to list (a name: one known only from the cluster's view),
        and the view's counts."""
        rows: list[Function | bytes] = list(self._state.functions)
        view = self._state.cluster_view
        if view is None:
            return rows, {}
        counts = dict(view.functions)
        rows += [name for name in counts if self._state.get_function(name) is None]
        return rows, counts

    def _local(self, row: Function | bytes) -> tuple[bytes, Function | None] | None:
        """The name of a listed function and what this server has of it now (``None``
        for a function known only from the view); ``None`` for one that is gone."""
        if isinstance(row, bytes):
            # A function of the cluster's view that may have come here meanwhile.
            return row, self._state.get_function(row)
        if not self._live_function(row):
            return None
        return row.name, row

    def _status(self) -> Listing[Function | bytes]:
        rows, cluster = self._function_rows()
        none = ClusterCounts()

        def line(row: Function | bytes) -> bytes | None:
            found = self._local(row)
            if found is None:
                return None
            name, f = found
            c = cluster.get(name, none)
            if f is None:
                return status_line(name, c.total, c.elsewhere, 0)
            return status_line(name, f.total + c.total, f.running + c.elsewhere, len(f.workers))

        return Listing(rows, line)

    def _priority_status(self) -> Listing[Function | bytes]:
        rows, cluster = self._function_rows()
        none = ClusterCounts()

        def line(row: Function | bytes) -> bytes | None:
            found = self._local(row)
            if found is None:
                return None
            name, f = found
            high, normal, low = cluster.get(name, none).waiting
            if f is None:
                return priority_status_line(name, high, normal, low, 0)
            counts, held = f.counts, f.held
            return priority_status_line(
                name,
                counts[0] + held[0] + high,
                counts[1] + held[1] + f.future + normal,  # epoch jobs, as gearmand counts them
                counts[2] + held[2] + low,
                len(f.workers),
            )

        return Listing(rows, line)

    def _workers(self) -> Listing[ConnectionState]:
        def line(c: ConnectionState) -> bytes | None:
            if c.closed:
                return None
            names = [f.name for f in reversed(c.ability_list)]
            return workers_line(c.fd, c.address, c.client_id, names)

        return Listing(list(self._connections), line)

    def _show_jobs(self) -> Listing[Job | bytes]:
        def line(job: Job | bytes) -> bytes | None:
            if isinstance(job, bytes):
                return show_jobs_line(job, 0, False, True)  # a job of the cluster's queue
            if job.state == GONE:
                return None
            queued = job.background and not job.cancelled
            return show_jobs_line(job.handle, job.retries, _ignored(job), queued)

        state = self._state
        rows: list[Job | bytes] = list(state.jobs)
        view = state.cluster_view
        if view is not None:
            rows += [handle for handle in view.handles if state.get_job(handle) is None]
        return Listing(rows, line)

    def _show_unique_jobs(self) -> Listing[Job]:
        def line(job: Job) -> bytes | None:
            return None if job.state == GONE else job.unique + b"\n"

        return Listing(list(self._state.jobs), line)

    def _cancel_job(self, command: CancelJob) -> bytes:
        if self._state.cancel_job(command.handle):
            return format_ok()
        return format_error_reply(UNKNOWN_JOB)

    def _refusal(self, name: bytes) -> bytes | None:
        """The ``ERR`` line refusing the function name ``name``, or ``None``."""
        why = function_name_error(name, self._state.config.max_function_name)
        return None if why is None else format_error(*why)

    def _create_function(self, command: CreateFunction) -> bytes:
        refusal = self._refusal(command.function)
        if refusal is not None:
            return refusal
        self._state.create_function(command.function)
        return format_ok()

    def _drop_function(self, command: DropFunction) -> bytes:
        refusal = self._refusal(command.function)
        if refusal is not None:
            return refusal
        dropped = self._state.drop_function(command.function)
        if dropped is None:
            return format_error_reply(DROP_FUNCTION_NOT_FOUND)
        if not dropped:
            return format_error_reply(DROP_FUNCTION_BUSY)
        return format_ok()

    def _max_queue(self, command: MaxQueue) -> bytes:
        refusal = self._refusal(command.function)
        if refusal is not None:
            return refusal
        self._state.set_max_queue(command.function, command.sizes)
        return format_ok()

    def _version(self, command: Version) -> bytes:
        return format_version(self._state.config.version)

    def _getpid(self, command: GetPid) -> bytes:
        return format_getpid(self._state.config.pid)

    def _verbose(self, command: Verbose) -> bytes:
        return format_verbose(self._state.config.verbose)

    def _shutdown(self, command: Shutdown) -> bytes:
        return format_error_reply(command.refusal())
