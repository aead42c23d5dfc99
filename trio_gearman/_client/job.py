"""What a client gets back: job handles, job status, and foreground jobs to follow."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Generic, TypeVar

import attrs

from .._exceptions import ServerLost
from .connection import ClientConnection, Submission, Update

__all__ = ["ForegroundJob", "JobHandle", "JobStatus"]

R = TypeVar("R")


@attrs.frozen
class JobHandle:
    """The handle a server gave a job, and the server that gave it.

    Attributes:
        handle: the handle, as the server sent it (e.g. ``b"H:host:42"``).
        server: the server's address, ``host:port``.
    """

    handle: bytes
    server: str

    def __str__(self) -> str:
        return self.handle.decode(errors="replace")


@attrs.frozen
class JobStatus:
    """A job's status, as the server reports it (STATUS_RES or STATUS_RES_UNIQUE).

    Attributes:
        known: the server knows the job (queued or running).
        running: a worker is running it.
        numerator: the progress the worker last sent (WORK_STATUS), else 0.
        denominator: the scale of ``numerator``, else 0.
        clients: foreground clients waiting for the job (only from a status
            query by unique key), else ``None``.
    """

    known: bool
    running: bool
    numerator: int
    denominator: int
    clients: int | None = None

    @property
    def progress(self) -> float | None:
        """``numerator / denominator``, or ``None`` when no progress was reported."""
        return self.numerator / self.denominator if self.denominator else None


class ForegroundJob(Generic[R]):
    """A foreground job whose updates are followed as they arrive.

    Made by :meth:`Client.submit_job <trio_gearman.Client.submit_job>`; entering
    it submits the job and waits for its handle; leaving it stops following the
    job (packets that still arrive for it are dropped). Iterate it for the
    job's WORK_DATA, WORK_WARNING and WORK_STATUS packets; iteration ends when
    the job completes, or raises :class:`~trio_gearman.JobFailed` /
    :class:`~trio_gearman.JobException` when it fails, or
    :class:`~trio_gearman.ServerLost` when its server is lost (unless the client
    retries on server loss: then the job is submitted again and followed there).

    Example:
        >>> async def follow(client):
        ...     async with client.submit_job("count", b"5") as job:
        ...         async for update in job:
        ...             print(update)
        ...     return job.result
    """

    def __init__(
        self,
        place: Callable[
            [tuple[ClientConnection, Submission] | None],
            Awaitable[tuple[ClientConnection, Submission]],
        ],
        decode: Callable[[bytes], R],
        function: str,
        *,
        may_retry: Callable[[], bool] = lambda: False,
    ) -> None:
        self._place = place
        self._decode = decode
        self._function = function
        self._may_retry = may_retry
        self._conn: ClientConnection | None = None
        self._submission: Submission | None = None

    @property
    def function(self) -> str:
        """The job's function name."""
        return self._function

    @property
    def handle(self) -> JobHandle:
        """The job's handle.

        Raises:
            RuntimeError: the job has not been submitted yet, or has no handle (the
                server refused it or the connection ended first).
        """
        submission = self._started()
        if submission.handle is None:
            raise RuntimeError(f"the {self._function!r} job has no handle: {submission.error}")
        return JobHandle(submission.handle, self._server())

    @property
    def done(self) -> bool:
        """Whether the job has completed or failed."""
        return self._submission is not None and self._submission.done

    @property
    def result(self) -> R:
        """The job's result (decoded by the codec, if any), once it completed.

        Raises:
            JobFailed: the job failed (or :class:`~trio_gearman.JobException`,
                :class:`~trio_gearman.ConnectionLost`).
            RuntimeError: the job has not finished.
        """
        submission = self._started()
        if not submission.done:
            raise RuntimeError(f"job {self.handle} of {self._function!r} has not finished")
        if submission.error is not None:
            raise submission.error
        return self._decode(submission.result)

    async def wait(self) -> R:
        """Wait for the job's end, dropping updates not yet read; return its result.

        Raises:
            JobFailed: the job failed (see :attr:`result`).
        """
        conn, submission = self._following()
        while True:
            while not submission.done:
                if submission.updates is not None:
                    submission.updates.clear()
                await conn.next_change(submission)
            if not await self._resubmitted(submission):
                return self.result
            conn, submission = self._following()

    def __aiter__(self) -> ForegroundJob[R]:
        return self

    async def __anext__(self) -> Update:
        conn, submission = self._following()
        while True:
            updates = submission.updates
            if updates:
                return updates.popleft()
            if submission.done:
                error = submission.error
                if error is None:
                    raise StopAsyncIteration
                if not await self._resubmitted(submission):
                    raise error
                conn, submission = self._following()
                continue
            await conn.next_change(submission)

    async def _resubmitted(self, submission: Submission) -> bool:
        """After the loss of the job's server, submit it again if the client retries."""
        if not isinstance(submission.error, ServerLost) or not self._may_retry():
            return False
        assert self._conn is not None
        self._conn, self._submission = await self._place((self._conn, submission))
        return True

    async def __aenter__(self) -> ForegroundJob[R]:
        if self._submission is not None:
            raise RuntimeError("a ForegroundJob can be entered only once")
        # Returns once the job has its handle, or was refused.
        self._conn, submission = await self._place(None)
        self._submission = submission
        if submission.handle is None and submission.error is not None:
            raise submission.error  # refused (ERROR), or the connection ended
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._conn is not None and self._submission is not None:
            self._conn.abandon(self._submission)

    def _started(self) -> Submission:
        if self._submission is None:
            raise RuntimeError("enter the job first: 'async with client.submit_job(...) as job'")
        return self._submission

    def _following(self) -> tuple[ClientConnection, Submission]:
        submission = self._started()
        assert self._conn is not None
        return self._conn, submission

    def _server(self) -> str:
        assert self._conn is not None
        return self._conn.server
