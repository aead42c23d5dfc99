"""What a cluster member asks of the shared store, and what it knows of the rest.

A server in a cluster (``ServerConfig.cluster``) queues only the jobs it claimed
from the store. :func:`claim_demand` tells the I/O layer how many more to claim
so that its workers stay busy without hoarding jobs that other members'
workers could run. A :class:`ClusterView` is the I/O layer's latest look at the
rest of the shared queue, which the admin commands add to this server's own jobs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import attrs

from .model import Function

__all__ = ["ClaimPacer", "ClusterCounts", "ClusterView", "claim_demand"]


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


class ClaimPacer:
    """How many jobs a member claims for each function, paced by how fast its workers take them.

    A claim is a round trip to the database: claiming a fixed two jobs per
    worker caps a member at a few thousand short jobs a second, however fast
    its workers are. The pacer keeps, per function, an estimate of the rate at
    which the workers here take its jobs (smoothed over about
    :attr:`smoothing` seconds) and claims enough for :attr:`horizon` seconds
    of that rate, at least ``low`` and at most ``high`` jobs per worker. Short
    jobs are then claimed in large batches, and long ones a few at a time, so
    that one member does not hold a backlog that other members' idle workers
    could run.

    Call :meth:`demand` at each claim round and :meth:`got` with what the
    claim brought.

    Args:
        low: jobs kept here per worker at the least.
        high: jobs kept here per worker at the most.
        horizon: seconds of the workers' rate claimed ahead.
        smoothing: seconds over which the rate estimate follows a change.
    """

    def __init__(
        self, low: int = 2, high: int = 64, horizon: float = 0.05, smoothing: float = 0.25
    ) -> None:
        if not 1 <= low <= high:
            raise ValueError(f"need 1 <= low <= high, not low={low}, high={high}")
        if not (horizon > 0 and smoothing > 0):
            raise ValueError("horizon and smoothing must be positive")
        self.low = low
        self.high = high
        self.horizon = horizon
        self.smoothing = smoothing
        # Per function: jobs here after the last claim, when, and the rate estimate.
        self._tracks: dict[bytes, list[float]] = {}

    def rate(self, name: bytes) -> float:
        """The estimated jobs per second the workers here take of function ``name``."""
        track = self._tracks.get(name)
        return 0.0 if track is None else track[2]

    def demand(self, functions: Iterable[Function], now: float) -> list[tuple[bytes, int]]:
        """Like :func:`claim_demand`, with the counts paced by the workers' rate.

        Args:
            functions: the server's functions (``ServerState.functions``).
            now: the event loop's time, in seconds.

        Returns:
            ``(function name, count)`` pairs, in the order of ``functions``.
        """
        wanted: list[tuple[bytes, int]] = []
        tracks = self._tracks
        kept: dict[bytes, list[float]] = {}
        for function in functions:
            workers = len(function.workers)
            if not workers:
                continue  # its estimate is forgotten: it starts again
            name = function.name
            have = sum(function.counts) + sum(function.held)
            track = tracks.get(name)
            rate = 0.0
            if track is not None:
                before, since, rate = track
                elapsed = now - since
                if elapsed > 0:
                    taken = max(before - have, 0.0)
                    weight = min(elapsed / self.smoothing, 1.0)
                    rate += (taken / elapsed - rate) * weight
            target = min(max(math.ceil(rate * self.horizon), self.low), self.high) * workers
            kept[name] = [float(have), now, rate]
            if target > have:
                wanted.append((name, target - have))
        self._tracks = kept
        return wanted

    def got(self, name: bytes, count: int) -> None:
        """The claim after :meth:`demand` brought ``count`` jobs of function ``name``."""
        track = self._tracks.get(name)
        if track is not None:
            track[0] += count
