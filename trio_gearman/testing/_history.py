"""What the embedded test server remembers of every job it has seen."""

from __future__ import annotations

import anyio
import attrs

from .._proto._packets import Priority
from .._proto.server.model import Job, JobOutcome

__all__ = ["JobHistory", "JobRecord"]


@attrs.define(eq=False)
class JobRecord:
    """One job the test server has seen, from submission to its end.

    Attributes:
        handle: the job handle.
        function: the function name.
        unique: the unique key as submitted (empty: none).
        data: the payload.
        priority: HIGH, NORMAL or LOW.
        background: whether it was submitted as a background job.
        outcome: how it ended, or ``None`` while the server still has it.
        result: the WORK_COMPLETE data or the WORK_EXCEPTION text, else empty.
        retries: how many times it lost its worker and was queued again.
    """

    handle: str
    function: str
    unique: bytes
    data: bytes
    priority: Priority
    background: bool
    outcome: JobOutcome | None = None
    result: bytes = b""
    retries: int = 0

    @property
    def done(self) -> bool:
        """Whether the job has left the server."""
        return self.outcome is not None


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class JobHistory:
    """Records every job of a server's state (a ``JobObserver``) and signals changes."""

    def __init__(self) -> None:
        self.records: list[JobRecord] = []
        self._open: dict[bytes, JobRecord] = {}
        self._changed: anyio.Event | None = None

    # --- the state machine's side (JobObserver) -------------------------------------------

    def job_created(self, job: Job) -> None:
        """Start a record for a new job."""
        record = JobRecord(
            handle=_text(job.handle),
            function=_text(job.function.name),
            unique=job.unique,
            data=job.data,
            priority=Priority(job.priority),
            background=job.background,
        )
        self.records.append(record)
        self._open[job.handle] = record

    def job_ended(self, job: Job, outcome: JobOutcome, result: bytes) -> None:
        """Close the record of a job that left the server."""
        record = self._open.pop(job.handle, None)
        if record is not None:
            record.outcome = outcome
            record.result = result
            record.retries = job.retries
        self.changed()

    # --- the test server's side -----------------------------------------------------------

    def lose_all_but(self, kept: set[bytes]) -> None:
        """Close every open record as lost, except those of the ``kept`` handles."""
        for handle in [handle for handle in self._open if handle not in kept]:
            self._open.pop(handle).outcome = JobOutcome.LOST
        self.changed()

    def changed(self) -> None:
        """Wake the tasks in :meth:`wait_changed`."""
        event, self._changed = self._changed, None
        if event is not None:
            event.set()

    async def wait_changed(self) -> None:
        """Wait until a job ends (or the server restarts)."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()
