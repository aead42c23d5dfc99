"""One client connection to one job server: the I/O around its sans-IO state.

:class:`ClientConnection` owns the :class:`~trio_gearman._net.stream.PacketStream`
and the events its callers wait on; what the requests in flight are and which
reply settles which lives in
:class:`~trio_gearman._proto.client.ClientConnectionState`. A supervisor can own
several connections (one per server).
"""

from __future__ import annotations

import logging

import anyio
import anyio.abc

from .._exceptions import ConnectionLost
from .._net.stream import PacketStream
from .._proto import EchoReq, EchoRes, Event, Message, Priority
from .._proto.client import Call, ClientConnectionState, Request, Submission, Update

__all__ = ["Call", "ClientConnection", "Submission", "Update"]

logger = logging.getLogger("trio_gearman.client")


class ClientConnection:
    """One client connection: its stream, its sans-IO state, and the waiting on both.

    Run :meth:`run` in a task; submit and call from any task of the same loop, and
    wait for a request with :meth:`wait` or :meth:`next_change`.

    Args:
        stream: the connection.
        client_id: sent as SET_CLIENT_ID first, if given.
        exceptions: ask the server for WORK_EXCEPTION packets (OPTION_REQ).
        handshake: open with a request the server must answer (the OPTION_REQ, or
            else an ECHO_REQ), so that a silent server shows at once.
    """

    __slots__ = ("_changed", "_receive", "_send", "_state", "_stream", "_waiters", "server")

    def __init__(
        self,
        stream: PacketStream,
        *,
        client_id: bytes | None = None,
        exceptions: bool = True,
        handshake: bool = False,
    ) -> None:
        self._stream = stream
        self.server = stream.peer
        self._send = stream.send_nowait
        self._state = state = ClientConnectionState(stream.peer)
        self._waiters: dict[Request, anyio.Event] = {}
        self._receive = state.receive
        self._changed = state.changed  # the state keeps this list; we clear it
        for message in state.open(client_id=client_id, exceptions=exceptions, handshake=handshake):
            self._send(message)

    @property
    def error(self) -> ConnectionLost | None:
        """Why the connection ended, or ``None`` while it is usable."""
        return self._state.error

    @property
    def usable(self) -> bool:
        """Whether requests can be sent: the connection has not ended."""
        return self._state.error is None and self._stream.error is None

    @property
    def in_flight(self) -> int:
        """Requests waiting for a reply plus foreground jobs waiting for their end."""
        return self._state.in_flight

    @property
    def heard(self) -> int:
        """How many chunks the server has sent on this connection."""
        return self._stream.reads

    @property
    def waiting(self) -> bool:
        """Whether the server owes an answer: a reply, or the end of a job."""
        return self._state.waiting

    async def wait_answered(self) -> None:
        """Wait for the answer to the request the connection opened with, if any.

        Returns at once when there was none, and when the connection ends.
        """
        opening = self._state.opening
        if opening is not None:
            await self.wait(opening)

    def probe(self) -> None:
        """Send an ECHO_REQ (a heartbeat); its answer is matched like any reply."""
        if self.usable:
            self.call(EchoReq(b"heartbeat"), EchoRes)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the connection until it ends (then return) or the task is cancelled.

        When it ends, every request and job still in flight fails with
        :class:`~trio_gearman.ConnectionLost`.
        """
        try:
            await self._stream.serve(self._on_event, task_status=task_status)
        except ConnectionLost as exc:
            self._lost(exc, server_lost=True)
        finally:
            if self._state.error is None:
                self._lost(ConnectionLost("the client was closed", server=self.server))

    async def aclose(self) -> None:
        """Close the connection; whatever is in flight fails with ConnectionLost."""
        await self._stream.aclose()
        if self._state.error is None:
            self._lost(ConnectionLost("the client was closed", server=self.server))

    async def abort(self, reason: str) -> None:
        """Drop the connection because the server is gone (e.g. it stopped answering).

        Whatever is in flight fails as if the server had closed the connection:
        accepted foreground jobs with :class:`~trio_gearman.ServerLost`.
        """
        await self._stream.aclose(reason)

    # --- requests ------------------------------------------------------------------------

    def submit(
        self,
        function: bytes,
        unique: bytes,
        data: bytes,
        priority: Priority = Priority.NORMAL,
        *,
        background: bool = False,
        epoch: int | None = None,
        want_updates: bool = False,
    ) -> Submission:
        """Send a SUBMIT_JOB* (or SUBMIT_JOB_EPOCH when ``epoch`` is given).

        Raises:
            ConnectionLost: the connection has ended.
        """
        submission, message = self._state.submit(
            function,
            unique,
            data,
            priority,
            background=background,
            epoch=epoch,
            want_updates=want_updates,
        )
        self._send(message)
        return submission

    def call(self, message: Message, reply_type: type[Message]) -> Call:
        """Send a request answered by one ``reply_type`` packet (or an ERROR).

        Raises:
            ConnectionLost: the connection has ended.
        """
        call = self._state.call(reply_type)
        self._send(message)
        return call

    def abandon(self, submission: Submission) -> None:
        """Stop waiting for a job: its FIFO slot stays, its later packets are dropped."""
        self._state.abandon(submission)
        self._waiters.pop(submission, None)

    # --- waiting -------------------------------------------------------------------------

    async def _wait_change(self, request: Request) -> None:
        waiters = self._waiters
        event = waiters.get(request)
        if event is None:
            event = waiters[request] = anyio.Event()
        await event.wait()

    async def wait(self, request: Request) -> None:
        """Wait until ``request`` is settled (its outcome in ``error`` and the value)."""
        while not request.done:
            await self._wait_change(request)

    async def next_change(self, submission: Submission) -> None:
        """Wait for the job's next update, its handle or its end (at once if it is done)."""
        if not submission.done:
            await self._wait_change(submission)

    def _wake(self) -> None:
        """Wake whoever waits for the requests the state changed; clear the list."""
        changed = self._changed
        waiters = self._waiters
        if waiters:
            pop = waiters.pop
            for request in changed:
                event = pop(request, None)
                if event is not None:
                    event.set()
        changed.clear()

    # --- replies -------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        notice = self._receive(event)
        if notice is not None:
            logger.warning("%s", notice)
        changed = self._changed
        if changed:  # inlined _wake: once or twice per packet
            waiters = self._waiters
            if waiters:
                pop = waiters.pop
                for request in changed:
                    waiter = pop(request, None)
                    if waiter is not None:
                        waiter.set()
            changed.clear()

    def _lost(self, error: ConnectionLost, *, server_lost: bool = False) -> None:
        self._state.connection_lost(error, server_lost=server_lost)
        self._wake()
