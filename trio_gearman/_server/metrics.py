"""Prometheus metrics of a running job server (the ``monitor`` extra).

The sans-IO state counts (``ServerConfig(metrics=True)``: plain integers kept in
place, see :class:`~trio_gearman._proto.server.model.FunctionStats`); this module
reads those counters when Prometheus scrapes and turns them into metric
families with ``prometheus-client``'s collector API. Nothing is computed per
packet here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .._proto.server.model import DURATION_BUCKETS, OUTCOMES
from .store.writer import BATCH_BUCKETS

if TYPE_CHECKING:
    from .server import GearmanServer

__all__ = ["ServerCollector", "metrics_registry"]

_PRIORITIES = ("high", "normal", "low")
_KINDS = ("foreground", "background")


def _buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus's cumulative ``(le, count)`` pairs, ``+Inf`` last."""
    pairs: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(bounds, counts, strict=False):
        total += count
        pairs.append((repr(float(bound)), total))
    pairs.append(("+Inf", total + counts[-1]))
    return pairs


class ServerCollector(Collector):
    """Reads a :class:`~trio_gearman.GearmanServer`'s counters at each scrape.

    Args:
        server: a server made with ``ServerConfig(metrics=True)`` (without it the
            per-function counters and histograms are empty; the gauges are there).
    """

    def __init__(self, server: GearmanServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        """Every metric family, from the counters as they are now."""
        server = self.server
        state = server.state
        waiting = GaugeMetricFamily(
            "gearman_jobs_waiting",
            "Jobs queued for a worker, by function and priority.",
            labels=["function", "priority"],
        )
        scheduled = GaugeMetricFamily(
            "gearman_jobs_scheduled",
            "Epoch jobs waiting for their time, and jobs the store is committing.",
            labels=["function"],
        )
        running = GaugeMetricFamily(
            "gearman_jobs_running", "Jobs that workers hold.", labels=["function"]
        )
        workers = GaugeMetricFamily(
            "gearman_workers", "Connections registered for the function.", labels=["function"]
        )
        submitted = CounterMetricFamily(
            "gearman_jobs_submitted",
            "New jobs, by kind and priority.",
            labels=["function", "kind", "priority"],
        )
        coalesced = CounterMetricFamily(
            "gearman_jobs_coalesced",
            "Submissions that joined a job with the same unique key.",
            labels=["function"],
        )
        ended = CounterMetricFamily(
            "gearman_jobs_ended",
            "Jobs ended: completed, failed, exception, cancelled, lost.",
            labels=["function", "outcome"],
        )
        retried = CounterMetricFamily(
            "gearman_jobs_retried",
            "Jobs queued again because their worker went away or timed out.",
            labels=["function"],
        )
        wait = HistogramMetricFamily(
            "gearman_job_queue_wait_seconds",
            "From submission (or an epoch job's time) to a worker's taking it.",
            labels=["function"],
        )
        run = HistogramMetricFamily(
            "gearman_job_run_seconds",
            "From a worker's taking a job to its result.",
            labels=["function"],
        )
        for function in state.functions:
            name = function.name.decode("utf-8", "replace")
            for priority, label in enumerate(_PRIORITIES):
                count = function.counts[priority] + function.held[priority]
                waiting.add_metric([name, label], count)
            scheduled.add_metric([name], function.future + function.pending)
            running.add_metric([name], function.running)
            workers.add_metric([name], len(function.workers))
            stats = function.stats
            if stats is None:
                continue
            for index, count in enumerate(stats.submitted):
                submitted.add_metric([name, _KINDS[index // 3], _PRIORITIES[index % 3]], count)
            coalesced.add_metric([name], stats.coalesced)
            for outcome, count in zip(OUTCOMES, stats.ended, strict=True):
                ended.add_metric([name, outcome], count)
            retried.add_metric([name], stats.retried)
            wait.add_metric([name], _buckets(DURATION_BUCKETS, stats.wait), stats.wait_sum)
            run.add_metric([name], _buckets(DURATION_BUCKETS, stats.run), stats.run_sum)
        yield from (waiting, scheduled, running, workers)
        yield from (submitted, coalesced, ended, retried, wait, run)

        roles = {"client": 0, "worker": 0, "admin": 0}
        for conn in state.connections:
            role = "worker" if conn.ability_list else "admin" if conn.admin else "client"
            roles[role] += 1
        connections = GaugeMetricFamily(
            "gearman_connections", "Open connections, by role.", labels=["role"]
        )
        for role, count in roles.items():
            connections.add_metric([role], count)
        yield connections
        statistics = server.statistics()
        yield CounterMetricFamily(
            "gearman_connections_accepted", "Connections served.", value=statistics.accepted
        )
        yield CounterMetricFamily(
            "gearman_received_bytes", "Bytes read.", value=statistics.bytes_received
        )
        yield CounterMetricFamily("gearman_sent_bytes", "Bytes sent.", value=statistics.bytes_sent)

        store = server.store_statistics()
        if store is not None:
            latency = HistogramMetricFamily(
                "gearman_store_commit_seconds", "How long each commit of the queue store took."
            )
            latency.add_metric([], _buckets(DURATION_BUCKETS, store.latency), store.latency_sum)
            yield latency
            batch = HistogramMetricFamily(
                "gearman_store_commit_jobs", "Jobs inserted per commit (group commit)."
            )
            batch.add_metric([], _buckets(BATCH_BUCKETS, store.batch), float(store.jobs))
            yield batch
            yield CounterMetricFamily(
                "gearman_store_commit_failures",
                "Commits of the queue store that failed.",
                value=store.failures,
            )


def metrics_registry(server: GearmanServer) -> CollectorRegistry:
    """A registry holding only this server's metrics (no process metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return registry
