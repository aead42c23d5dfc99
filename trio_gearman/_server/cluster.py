"""A job server's life as a cluster member: claiming jobs, renewing leases, giving back.

:class:`ClusterMember` runs beside the store's writer. Whenever the member's
workers could take more jobs (:class:`~trio_gearman._proto.server.cluster.ClaimPacer`)
it claims them from the shared table and gives them to the state as stored jobs
(``restore_job``), so that their end deletes their rows as on a single server.
It looks when another member notifies that jobs were committed, when its own
workers free up or register, and every ``poll`` seconds in any case. It renews
the leases of the jobs it holds every third of the lease, and gives back the claims its workers can
no longer run (they left) and, when it stops, every claim it still holds. It
keeps the state's view of the rest of the queue current for the admin commands
(:meth:`~trio_gearman._proto.server.state.ServerState.set_cluster_view`). A
draining server (:meth:`ClusterMember.drain`) claims nothing more and gives back
at once the claimed jobs its workers have not started.

Each database call runs in a worker thread, one at a time per connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, TypeVar

import anyio
import anyio.to_thread

from .._proto.server.cluster import ClaimPacer
from .store.base import StoreError
from .store.cluster import DEFAULT_POLL, ClusterClaims, ClusterListener, ClusterStore
from .store.writer import StoreWriter

__all__ = ["DEFAULT_POLL", "ClusterMember"]

logger = logging.getLogger("trio_gearman.server.cluster")

T = TypeVar("T")

PER_WORKER: Final = (2, 64)
"""Jobs kept here per worker, at the least and at the most (:class:`ClaimPacer`)."""
VIEW_EVERY: Final = 1.0
"""Seconds at least between two reads of the admin view's counts."""
VIEW_HANDLES: Final = 1000
"""The most handles of other members' and waiting jobs that ``show jobs`` lists."""
_LISTEN_SLICE: Final = 0.5  # seconds a wait for notifications blocks its thread at most
_RETRY: Final = 1.0  # seconds before listening again after the database went away
_CLOSE_TIMEOUT: Final = 5.0
_LATER_MARGIN: Final = 0.05  # seconds after a lapse or due time before looking


class ClusterMember:
    """Claims jobs of the shared queue for one server's workers.

    Args:
        store: the member's store, opened (by the server's writer) before
            :meth:`run`.
        writer: the server's store writer (of ``store``; its state has
            ``ServerConfig(durable=True, cluster=True)``).
        send_pending: sends what the state queued (a claimed job wakes workers).
        poll: seconds between looks at the table when nothing notifies
            (``None``: the store's).
    """

    def __init__(
        self,
        store: ClusterStore,
        writer: StoreWriter,
        send_pending: Callable[[], None],
        *,
        poll: float | None = None,
    ) -> None:
        self.store = store
        self.state = writer.state
        self._writer = writer
        self._send_pending = send_pending
        self._poll = store.poll if poll is None else poll
        self._wake = anyio.Event()
        # Functions the table had no more jobs of at the last claim: only a
        # notification or a poll looks for them again, not every local change.
        self._empty: set[bytes] = set()
        self._pacer = ClaimPacer(*PER_WORKER)
        self._claims: ClusterClaims | None = None
        self._viewer: ClusterClaims | None = None
        self._listener: ClusterListener | None = None
        self._claim_limiter = anyio.CapacityLimiter(1)
        self._view_wanted = anyio.Event()
        self._failing = False
        self._notified = True
        self._draining = False
        self.claimed = 0
        """Jobs claimed so far."""

    def poke(self) -> None:
        """Something changed here (called after every batch): look for jobs if needed."""
        if not self._wake.is_set():
            self._wake.set()

    def drain(self) -> None:
        """The server drains: claim nothing more, give back the claimed jobs not running.

        The jobs its workers run are finished here; one whose worker leaves
        meanwhile is given back too.
        """
        if not self._draining:
            self._draining = True
            logger.info("Draining: claiming no more jobs from the cluster")
            self.poke()

    async def run(self) -> None:
        """Claim, renew and listen until cancelled."""
        self._claims = self.store.claims()
        self._viewer = self.store.claims()
        self._listener = self.store.listener()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._listen)
            tg.start_soon(self._renew)
            tg.start_soon(self._watch)
            await self._claim_loop()

    async def close(self) -> None:
        """Give back every claim still held (after the last deletions were written)."""
        claims = self._claims
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
            if claims is not None:
                try:
                    count = await self._run(claims.release, None)
                except StoreError as exc:
                    logger.warning(
                        "Cannot give back this member's claims (%s); they return to the "
                        "queue when their lease of %g s lapses",
                        exc,
                        self.store.lease,
                    )
                else:
                    if count:
                        logger.info("Gave back %d claimed jobs to the cluster", count)
        if claims is not None:
            claims.close()
        if self._viewer is not None:
            self._viewer.close()
        if self._listener is not None:
            self._listener.close()

    # --- the tasks ------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        state = self.state
        while True:
            notified, self._notified = self._notified, False
            # A poke or a notification while this round runs starts another.
            self._wake = anyio.Event()
            draining = self._draining
            released = state.release_unserved(served_too=draining)
            if released:
                if draining:
                    logger.info("Draining: giving back %d queued jobs", len(released))
                await self._release(released)
            wanted = [] if draining else self._pacer.demand(state.functions, anyio.current_time())
            if notified:
                self._empty.clear()
            elif self._empty:
                wanted = [(name, n) for name, n in wanted if name not in self._empty]
            wait = self._poll
            if wanted:
                full, next_in = await self._claim(wanted)
                if full:
                    continue  # the table may hold more
                if next_in is not None:
                    # A lease lapses or an epoch job comes due before the poll.
                    wait = min(wait, next_in + _LATER_MARGIN)
            self._view_wanted.set()  # what was claimed is no longer the others'
            with anyio.move_on_after(wait) as waited:
                await self._wake.wait()
            if waited.cancelled_caught:
                self._notified = True

    def _deleting(self) -> list[bytes]:
        """The handles of jobs that ended here whose rows are not deleted yet."""
        handles = self.state.removals_pending()
        writing = self._writer.writing
        if writing is not None:
            handles += writing.removed
        return handles

    async def _claim(self, wanted: list[tuple[bytes, int]]) -> tuple[bool, float | None]:
        """Claim ``wanted``: whether every function got all it asked for, and when
        to look again if not (see :attr:`~.store.cluster.Claimed.next_in`)."""
        assert self._claims is not None
        try:
            claimed = await self._run(self._claims.claim, wanted, self._deleting())
        except StoreError as exc:
            if not self._failing:
                self._failing = True
                logger.error("Cannot claim jobs: %s; trying again", exc)
            return False, _RETRY
        jobs = claimed.jobs
        if self._failing:
            self._failing = False
            logger.warning("Claiming jobs works again")
        state = self.state
        now = anyio.current_time()
        got: dict[bytes, int] = {}
        for job in jobs:
            got[job.function] = got.get(job.function, 0) + 1
            if state.claimed_early(job.handle):
                # Claimed again after a lapse, or before this member's own commit
                # of it was answered: it is here already.
                continue
            state.restore_job(
                job.handle, job.function, job.unique, job.data, job.priority, job.reducer, None, now
            )
        self.claimed += len(jobs)
        for name, count in got.items():
            self._pacer.got(name, count)
        full = True
        for name, count in wanted:
            if got.get(name, 0) < count:
                self._empty.add(name)
                full = False
        if jobs:
            self._send_pending()
        return full, claimed.next_in

    async def _release(self, handles: list[bytes]) -> None:
        assert self._claims is not None
        try:
            await self._run(self._claims.release, handles)
        except StoreError as exc:
            logger.warning(
                "Cannot give back %d jobs no worker here can run (%s); they return to "
                "the queue when their lease lapses",
                len(handles),
                exc,
            )

    async def _renew(self) -> None:
        assert self._claims is not None
        lease = self.store.lease
        renewed = anyio.current_time()
        failing = False
        while True:
            await anyio.sleep(lease / 3)
            # Rows of jobs that ended here but are not deleted yet stay claimed too.
            held = [job.handle for job in self.state.jobs if job.stored] + self._deleting()
            if not held:
                renewed = anyio.current_time()
                continue
            started = anyio.current_time()
            try:
                await self._run(self._claims.renew, held)
            except StoreError as exc:
                if not failing:
                    failing = True
                    logger.error(
                        "Cannot renew this member's leases: %s; its jobs may run elsewhere "
                        "too once the lease of %g s lapses",
                        exc,
                        lease,
                    )
                if anyio.current_time() - renewed >= lease:
                    # Other members may claim them now: do not start them here as well.
                    dropped = self.state.release_unserved(served_too=True)
                    if dropped:
                        logger.warning(
                            "Gave up %d queued jobs whose leases lapsed; other members run them",
                            len(dropped),
                        )
                        self._send_pending()
            else:
                renewed = started
                if failing:
                    failing = False
                    logger.warning("Renewing this member's leases works again")

    async def _listen(self) -> None:
        listener = self._listener
        assert listener is not None
        lost = False
        while True:
            try:
                # Not abandoned when cancelled: the connection is closed only
                # after the wait returned (within the slice).
                heard = await anyio.to_thread.run_sync(listener.wait, _LISTEN_SLICE)
            except StoreError as exc:
                if not lost:
                    lost = True
                    logger.warning("Not listening for new jobs: %s; trying again", exc)
                await anyio.sleep(_RETRY)
                continue
            if lost:
                lost = False
                logger.info("Listening for new jobs again")
            if heard:
                self._notified = True
                self._view_wanted.set()
                self.poke()

    async def _watch(self) -> None:
        """Keep the state's view of the shared queue current, for the admin commands.

        It is read again after each claim round (which follows every change
        here) and each notification (a commit or a give-back elsewhere), and
        while the last one showed jobs (they may end, or be claimed, elsewhere
        without a word), but at most once every :data:`VIEW_EVERY` seconds.
        The admin commands answer from the last one at once, never waiting for
        the database.
        """
        viewer = self._viewer
        assert viewer is not None
        limiter = anyio.CapacityLimiter(1)
        failing = False
        busy = False
        while True:
            if not busy:
                await self._view_wanted.wait()
            self._view_wanted = anyio.Event()
            started = anyio.current_time()
            try:
                view = await anyio.to_thread.run_sync(viewer.view, VIEW_HANDLES, limiter=limiter)
            except StoreError as exc:
                if not failing:
                    failing = True
                    logger.warning(
                        "Cannot read the cluster's queue for the admin commands: %s; they "
                        "show what was read last",
                        exc,
                    )
            else:
                if failing:
                    failing = False
                    logger.info("Reading the cluster's queue for the admin commands works again")
                self.state.set_cluster_view(view)
                busy = bool(view.functions)
            await anyio.sleep_until(started + VIEW_EVERY)

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(func, *args, limiter=self._claim_limiter)
