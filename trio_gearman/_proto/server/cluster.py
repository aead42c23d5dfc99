"""What a cluster member asks of the shared store: how many jobs it wants, per function.

A server in a cluster (``ServerConfig.cluster``) queues only the jobs it claimed
from the store. :func:`claim_demand` tells the I/O layer how many more to claim
so that its workers stay busy without hoarding jobs that other members'
workers could run.
"""

from __future__ import annotations

from collections.abc import Iterable

from .model import Function

__all__ = ["claim_demand"]


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
