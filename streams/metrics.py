"""Prometheus exposition of the worker's counters (``featflow_`` prefix, ``_total`` counters)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from streams.worker import FeatureWorker


class _WorkerCollector:
    def __init__(self, worker: FeatureWorker):
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        totals = self.worker.totals
        yield CounterMetricFamily(
            "featflow_events_accepted", "Events applied to feature state.", value=totals.accepted
        )
        yield CounterMetricFamily(
            "featflow_events_replay_skipped",
            "Redelivered events already reflected in a checkpoint.",
            value=totals.skipped_replays,
        )
        letters = CounterMetricFamily(
            "featflow_dead_letters",
            "Records sent to a dead-letter topic (acknowledged), by source topic and reason.",
            labels=["topic", "reason"],
        )
        for (topic, reason), count in sorted(self.worker.dead_letters.items()):
            letters.add_metric([topic, reason], count)
        yield letters
        yield GaugeMetricFamily(
            "featflow_partitions_owned",
            "Partitions this worker owns.",
            value=len(self.worker.processors),
        )


def render_metrics(worker: FeatureWorker) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkerCollector(worker))  # type: ignore[arg-type]
    return generate_latest(registry).decode()
