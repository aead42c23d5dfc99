"""``trio-gearmand``'s cluster options: ``--cluster NAME`` and ``--cluster-lease SECONDS``.

Every server started with the same ``--postgres-dsn`` and ``--cluster`` serves one
queue of background jobs (see the guide "Running a cluster").
"""

from __future__ import annotations

import argparse

from .._server.store.cluster import DEFAULT_LEASE, ClusterStore, check_cluster_name
from .options import UsageError, seconds

__all__ = ["add_cluster_options", "check_cluster_options", "make_cluster_store"]


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--cluster`` and ``--cluster-lease`` to ``trio-gearmand``'s parser."""
    parser.add_argument(
        "--cluster",
        metavar="NAME",
        help="with -q postgres: serve the background queue of the cluster NAME together "
        "with every server started with the same --postgres-dsn and NAME (letters, "
        "digits and _; its jobs live in the table <postgres-table>_NAME)",
    )
    parser.add_argument(
        "--cluster-lease",
        type=seconds(zero=False),
        metavar="SECONDS",
        help="with --cluster: how long a job claimed by a server that died stays "
        f"claimed before another server may run it (default {DEFAULT_LEASE:g}; renewed "
        "every third of it while the server lives)",
    )


def check_cluster_options(options: argparse.Namespace) -> None:
    """Check the cluster options against the queue type; fold the cluster name.

    Raises:
        UsageError: ``--cluster`` without ``-q postgres``, ``--cluster-lease``
            without ``--cluster``, or a bad cluster name or lease.
    """
    if options.cluster_lease is not None and options.cluster is None:
        raise UsageError("--cluster-lease needs --cluster NAME")
    if options.cluster is None:
        return
    if options.queue_type != "postgres":
        raise UsageError(
            "--cluster needs --queue-type postgres and --postgres-dsn DSN "
            "(the servers of a cluster share one PostgreSQL queue)"
        )
    try:
        options.cluster = check_cluster_name(options.cluster)
    except ValueError as exc:
        raise UsageError(f"argument --cluster: {exc}") from None
    if options.cluster_lease is None:
        options.cluster_lease = DEFAULT_LEASE
    elif options.cluster_lease == float("inf"):
        raise UsageError("argument --cluster-lease: must be a finite number of seconds")


def make_cluster_store(options: argparse.Namespace) -> ClusterStore:
    """The store of a cluster member, from checked options.

    Raises:
        UsageError: the cluster's table name is too long.
        StoreError: psycopg is missing, or the connection string is bad.
    """
    try:
        return ClusterStore(
            options.postgres_dsn,
            options.cluster,
            options.postgres_table,
            lease=options.cluster_lease,
        )
    except ValueError as exc:
        raise UsageError(f"argument --cluster: {exc}") from None
