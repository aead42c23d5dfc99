"""The job a worker function receives, and the functions a worker registers."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import anyio.to_thread
import attrs

from .._payload import payload
from .._proto import Message, WorkData, WorkStatus, WorkWarning
from .._proto.worker import AssignedJob

__all__ = ["FunctionSpec", "Handler", "Job", "ProgressSender", "result_bytes"]


class ProgressSender(Protocol):
    """Where a :class:`Job` sends its progress: the connection that owns it."""

    async def send_progress(self, job: AssignedJob[FunctionSpec], message: Message) -> None:
        """Send WORK_DATA, WORK_STATUS or WORK_WARNING for ``job``.

        Raises:
            ConnectionLost: the connection has ended.
            RuntimeError: the job has finished.
        """


class Job:
    """One job, as a worker function receives it.

    Attributes:
        handle: the job handle the server assigned.
        function: the function name.
        unique: the job's unique key (empty when it has none).
        data: the payload.
        reducer: the reducer name of a map/reduce job, else ``None``.

    Args:
        sender: the connection that owns the job (the worker builds jobs).
        assigned: the job as the connection's protocol state holds it.

    Example:
        >>> async def reverse(job: Job) -> bytes:
        ...     await job.send_status(1, 2)
        ...     await job.send_data(b"partial")
        ...     return job.data[::-1]
    """

    __slots__ = ("_assigned", "_sender", "data", "function", "handle", "reducer", "unique")

    def __init__(self, sender: ProgressSender, assigned: AssignedJob[FunctionSpec]) -> None:
        self._sender = sender
        self._assigned = assigned
        self.handle = assigned.handle
        self.function = assigned.function.name
        self.unique = assigned.unique
        self.data = assigned.data
        self.reducer = assigned.reducer

    def __repr__(self) -> str:
        return (
            f"<Job {self.handle.decode(errors='replace')} of {self.function!r}, "
            f"{len(self.data)} bytes>"
        )

    async def send_data(self, data: bytes | str) -> None:
        """Stream a chunk of output to the waiting clients (WORK_DATA).

        Raises:
            ConnectionLost: the connection to the server has ended.
            RuntimeError: the job has already finished.
        """
        await self._send(WorkData(self.handle, payload(data)))

    async def send_warning(self, data: bytes | str) -> None:
        """Send a warning to the waiting clients (WORK_WARNING).

        Raises:
            ConnectionLost: the connection to the server has ended.
            RuntimeError: the job has already finished.
        """
        await self._send(WorkWarning(self.handle, payload(data)))

    async def send_status(self, numerator: int, denominator: int) -> None:
        """Report progress as ``numerator / denominator`` (WORK_STATUS).

        The server keeps the last status for GET_STATUS, also for background jobs.

        Raises:
            ConnectionLost: the connection to the server has ended.
            RuntimeError: the job has already finished.
        """
        await self._send(WorkStatus(self.handle, int(numerator), int(denominator)))

    async def _send(self, message: Message) -> None:
        if self._assigned.finished:
            raise RuntimeError(f"{self!r} has already finished")
        await self._sender.send_progress(self._assigned, message)


Handler = Callable[[Job], object]
"""A worker function: ``async def f(job) -> bytes | str | None``, or a plain function
(which runs in a worker thread)."""


def result_bytes(value: object) -> bytes:
    """The WORK_COMPLETE data for a worker function's return value.

    Raises:
        TypeError: the value is not bytes-like, ``str`` or ``None``.
    """
    if value is None:
        return b""
    return payload(value)


def _is_async(handler: Callable[..., Any]) -> bool:
    while isinstance(handler, functools.partial):
        handler = handler.func
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004
    )


@attrs.frozen
class FunctionSpec:
    """A registered worker function.

    Attributes:
        name: the function name.
        wire: the name as sent.
        handler: the function.
        is_async: whether ``handler`` is a coroutine function.
        timeout: the local time limit per job, in seconds, or ``None``.
        concurrency: the most jobs of this function at once, or ``None`` (only the
            worker's limit applies).
    """

    name: str
    wire: bytes
    handler: Handler
    is_async: bool
    timeout: float | None
    concurrency: int | None

    @classmethod
    def create(
        cls, name: str, handler: Handler, timeout: float | None, concurrency: int | None
    ) -> FunctionSpec:
        """Check the arguments and build the spec."""
        wire = name.encode()
        if not wire or b"\0" in wire:
            raise ValueError(f"a function name must be non-empty and free of NUL: {name!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        return cls(name, wire, handler, _is_async(handler), timeout, concurrency)

    async def call(self, job: Job, limiter: anyio.CapacityLimiter) -> object:
        """Run the handler: awaited when async, else in a worker thread.

        A thread that outlives a cancellation (a timeout, a stop) is abandoned: the
        job ends at once, the thread runs on until its function returns.
        """
        if self.is_async:
            awaitable: Awaitable[object] = self.handler(job)  # type: ignore[assignment]
            return await awaitable
        return await anyio.to_thread.run_sync(
            self.handler, job, abandon_on_cancel=True, limiter=limiter
        )
