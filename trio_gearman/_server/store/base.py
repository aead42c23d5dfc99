"""What every persistent queue implements: the contract between the server and a store.

A store is blocking code (a database driver) that the server drives from one
thread of its own, never from the event loop, and never from two threads at
once. The server batches its work: every background job accepted while a
transaction is being written goes into the next one (group commit), together
with the handles of the jobs that ended meanwhile.

The durability contract: :meth:`QueueStore.commit` returns only once its
transaction is on disk (or in the database); the server sends JOB_CREATED for
a background job, and hands the job to a worker, only after the commit that
holds it returned. A job's row is deleted after the job ended, in a later
commit: a crash in between runs the job again after the restart (at least once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs

from ..._exceptions import GearmanError
from ..._proto.server.model import StoredJob

__all__ = ["QueueStore", "StoreContents", "StoreError", "StoredJob"]


class StoreError(GearmanError):
    """The store could not do what it was asked (its message says why).

    A failed :meth:`QueueStore.commit` has changed nothing; the store must accept
    later calls again (reconnecting or reopening as it needs) once the cause is
    gone.
    """


@attrs.frozen
class StoreContents:
    """What a store holds when the server starts.

    Attributes:
        jobs: every stored job, in the order they were first committed.
        handle_limit: the highest handle number reserved so far (0: none). Handle
            numbers up to it may have been issued, to background and foreground
            jobs alike; a restarted server issues only numbers above it.
        handle_tag: a name no other server sharing the store uses (a cluster
            member's number, ``b"m7"``), put between the configured handle prefix
            and the number (``H:host:m7:1``); empty for none.
    """

    jobs: Sequence[StoredJob]
    handle_limit: int
    handle_tag: bytes = b""


class QueueStore(Protocol):
    """A persistent queue: SQLite, PostgreSQL, or a test double.

    Every method blocks and is called from the server's store thread, one call
    at a time.
    """

    @property
    def description(self) -> str:
        """What the store is, for log lines (``"sqlite /var/lib/q.db"``); no secrets."""
        ...

    def open(self) -> StoreContents:
        """Connect (creating the tables when missing) and read what is stored.

        Raises:
            StoreError: the store cannot be reached or read, or its tables have
                another layout.
        """
        ...

    def commit(
        self, added: Sequence[StoredJob], removed: Sequence[bytes], handle_limit: int | None
    ) -> Mapping[bytes, bytes] | None:
        """Write one transaction: delete ``removed``, then insert ``added`` (in order).

        Deleting first frees room in a store that is full.

        Args:
            added: new jobs, none of whose handles is stored yet.
            removed: handles of jobs that ended (an unknown handle is no error);
                never one of ``added``.
            handle_limit: the new highest reserved handle number, or ``None`` to
                keep the stored one. It only grows.

        Returns:
            ``None``, or for a store that coalesces background jobs on unique keys
            itself (a cluster's): the handles of the jobs of ``added`` it did not
            insert because a live job has their function and unique key, each
            with that job's handle (their submissions are acknowledged with it).

        Raises:
            StoreError: nothing was written (the transaction was rolled back).
        """
        ...

    def close(self) -> None:
        """Close the connection; no call follows. Must not raise."""
        ...
