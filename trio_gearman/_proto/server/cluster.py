"""What a cluster member asks of the shared store, and what it knows of the rest.

A server in a cluster (``ServerConfig.cluster``) queues only the jobs it claimed
from the store. :func:`claim_demand` tells the I/O layer how many more to claim
so that its workers stay busy without hoarding jobs that other members'
workers could run. A :class:`ClusterView` is the I/O layer's latest look at the
rest of the shared queue, which the admin commands add to this server's own jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from .model import Function

__all__ = ["ClusterCounts", "ClusterView", "claim_demand"]


@attrs.frozen
class ClusterCounts:
    """One function's jobs in the shared queue that this member does not hold.

    Attributes:
        waiting: the jobs no member holds (unclaimed, or their claim lapsed),
            epoch jobs not due yet included, per priority (HIGH, NORMAL, LOW).
        elsewhere: the jobs other members hold (claimed, queued there or
            running): ``status`` counts them as running.
    """

    waiting: tuple[int, int, int] = (0, 0, 0)
    elsewhere: int = 0

    @property
    def total(self) -> int:
        """Every job counted."""
        waiting = self.waiting
        return waiting[0] + waiting[1] + waiting[2] + self.elsewhere


@attrs.frozen
class ClusterView:
    """The shared queue beyond this member, as the I/O layer last read it.

    The jobs this member holds are not in it (the state knows them). The admin
    ``status``, ``prioritystatus`` and ``show jobs`` of a member add it to what
    the member holds (:meth:`ServerState.set_cluster_view
    <trio_gearman._proto.server.state.ServerState.set_cluster_view>`).

    Attributes:
        functions: the counts of each function with such jobs.
        handles: the handles of the oldest of those jobs (at most as many as the
            I/O layer reads), oldest first.
    """

    functions: Mapping[bytes, ClusterCounts] = attrs.Factory(dict)
    handles: Sequence[bytes] = ()


def claim_demand(functions: Iterable[Function], per_worker: int) -> list[tuple[bytes, int]]:
    """The functions this server has workers for, with how many jobs each could take.

    A function with ``w`` registered workers may have ``w * per_worker`` jobs
    queued here (or held; foreground ones too), waiting for a worker; the demand
    is what is missing. Running jobs do not count: a worker that runs several
    jobs at once grabs again, and each grab makes room for another claim.
    Functions without workers, or with enough jobs, are left out.

    Args:
        functions: the server's functions (``ServerState.functions``).
        per_worker: jobs kept ready per worker.

    Returns:
        ``(function name, count)`` pairs, in the order of ``functions``.

    Example:
        >>> claim_demand([], 2)
        []
    """
    wanted: list[tuple[bytes, int]] = []
    for function in functions:
        workers = len(function.workers)
        if not workers:
            continue
        have = sum(function.counts) + sum(function.held)
        missing = workers * per_worker - have
        if missing > 0:
            wanted.append((function.name, missing))
    return wanted
