"""The store's writer: group commits on a thread of their own, off the event loop.

The state machine collects what must be written (:class:`~trio_gearman._proto.
server.model.StoreWrite`); the writer task takes all of it at once, commits it
in a worker thread while the loop serves on, and reports back. Every durable
submission that arrives meanwhile goes into the next transaction, so a loaded
server commits many jobs per transaction and each acknowledgement still means
"committed".
"""

from __future__ import annotations

import gc
import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..._proto.server.model import DURATION_BUCKETS, StoreWrite
from ..._proto.server.state import ServerState
from .base import QueueStore, StoreError

__all__ = ["BATCH_BUCKETS", "StoreStatistics", "StoreWriter"]

logger = logging.getLogger("trio_gearman.server.store")

T = TypeVar("T")

_CLOSE_TIMEOUT = 10.0  # seconds the last transaction may take at shutdown
_ANSWER_SLICE: Final = 200
"""Jobs of a commit acknowledged at a time before other connections are served again (a
commit holds up to 1,000: answering them in one go was the foreground's worst latency)."""


BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
"""Upper bounds of the buckets of :attr:`StoreStatistics.batch`."""


class StoreStatistics:
    """What the writer has done, for metrics: plain counters updated in place.

    Attributes:
        commits: transactions committed.
        failures: transactions that failed.
        jobs: jobs committed (inserted).
        latency: commit-latency histogram: counts per bucket of
            :data:`~trio_gearman._proto.server.model.DURATION_BUCKETS`, plus one.
        latency_sum: the sum of the commit latencies, in seconds.
        batch: jobs-per-commit histogram: counts per bucket of :data:`BATCH_BUCKETS`,
            plus one.
    """

    __slots__ = ("batch", "commits", "failures", "jobs", "latency", "latency_sum")

    def __init__(self) -> None:
        self.commits = 0
        self.failures = 0
        self.jobs = 0
        self.latency = [0] * (len(DURATION_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.batch = [0] * (len(BATCH_BUCKETS) + 1)

    def committed(self, jobs: int, seconds: float) -> None:
        """Count one commit of ``jobs`` jobs that took ``seconds``."""
        self.commits += 1
        self.jobs += jobs
        self.latency[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.batch[bisect_left(BATCH_BUCKETS, jobs)] += 1


class StoreWriter:
    """Drives a :class:`~.base.QueueStore` for a :class:`ServerState`.

    Args:
        store: the store, not opened yet.
        state: the state of a durable server (``ServerConfig(durable=True)``).
        send_pending: sends the replies a commit released.
    """

    def __init__(
        self, store: QueueStore, state: ServerState, send_pending: Callable[[], None]
    ) -> None:
        self.store = store
        self.state = state
        self._send_pending = send_pending
        self._wake = anyio.Event()
        self._failing = False
        self._limiter = anyio.CapacityLimiter(1)
        self.statistics = StoreStatistics()
        self.writing: StoreWrite | None = None
        """The transaction being committed now, if any."""

    async def open(self, wall_time: float) -> int:
        """Open the store, give its jobs back to the state, reserve handles.

        Runs before the server listens. Jobs keep their handles, priorities,
        unique keys, reducers and epoch times, in submission order.

        Args:
            wall_time: the wall-clock time now (``time.time()``); epoch jobs
                already due are queued at once.

        Returns:
            How many jobs were replayed.

        Raises:
            StoreError: the store cannot be opened, or the first handle
                reservation cannot be written.
        """
        # Millions of small objects are made and kept: the cyclic collector would
        # walk them again and again for nothing (it took half the time).
        collecting = gc.isenabled()
        gc.disable()
        try:
            contents = await self._run(self.store.open)
            state = self.state
            if contents.handle_tag:
                prefix = state.config.job_handle_prefix
                state.set_handle_prefix(prefix + b":" + contents.handle_tag)
            state.reserve_handles(contents.handle_limit)
            offset = state.wall_offset
            now = anyio.current_time()
            replayed = len(contents.jobs)
            for job in contents.jobs:
                due = None
                if job.epoch is not None and job.epoch > wall_time:
                    due = job.epoch - offset
                state.restore_job(
                    job.handle,
                    job.function,
                    job.unique,
                    job.data,
                    job.priority,
                    job.reducer,
                    due,
                    now,
                )
            del contents
        finally:
            if collecting:
                gc.enable()
        write = state.take_store_write()
        if write is not None:
            coalesced = await self._commit(write)
            state.store_written(write, anyio.current_time(), coalesced)
        return replayed

    def wake(self) -> None:
        """The state has something to write (called after every batch)."""
        self._wake.set()

    async def run(self) -> None:
        """Commit what the state collects, one transaction at a time, until cancelled."""
        state = self.state
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            write = state.take_store_write()
            while write is not None:
                await self._write(write)
                write = state.take_store_write()

    async def close(self) -> None:
        """Write what is left (the deletions of the last jobs), then close the store."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            write = self.state.take_store_write()
            if write is not None and (write.added or write.removed):
                await self._write(write)
        with anyio.CancelScope(shield=True):
            await self._run(self.store.close)

    async def _write(self, write: StoreWrite) -> None:
        state = self.state
        self.writing = write
        try:
            # A transaction taken from the state is committed and answered even when
            # the server stops meanwhile: cancelled half-way, its deletions would be
            # lost (and a cluster member would give back the claims of jobs that
            # ended, for another member to run again).
            with anyio.CancelScope(shield=True):
                coalesced = await self._commit(write)
        except Exception as exc:
            if not isinstance(exc, StoreError):
                logger.exception("The queue store %s raised", self.store.description)
            if not self._failing:
                self._failing = True
                logger.error(
                    "The queue store %s failed: %s; durable submissions get QUEUE_ERROR "
                    "until it recovers",
                    self.store.description,
                    exc,
                )
            state.store_failed(write, str(exc).encode("utf-8", "replace"), anyio.current_time())
            self._send_pending()
            return
        finally:
            self.writing = None
        if self._failing:
            self._failing = False
            logger.warning("The queue store %s works again", self.store.description)
        for number, part in enumerate(write.parts(_ANSWER_SLICE)):
            if number:
                # Serve the other connections between parts; the jobs are on disk, so
                # the rest is acknowledged even if the server is stopping.
                with anyio.CancelScope(shield=True):
                    await anyio.lowlevel.checkpoint()
            state.store_written(part, anyio.current_time(), coalesced)
            self._send_pending()

    async def _commit(self, write: StoreWrite) -> Mapping[bytes, bytes] | None:
        """Commit ``write``; what the store says coalesced (see ``QueueStore.commit``)."""
        started = time.perf_counter()
        try:
            coalesced = await self._run(
                self.store.commit, write.added, write.removed, write.handle_limit
            )
        except BaseException:
            self.statistics.failures += 1
            raise
        self.statistics.committed(len(write.added), time.perf_counter() - started)
        return coalesced

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        # One thread at a time: a store is never called concurrently.
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)
