"""Prometheus exposition of a worker's counters (``featflow_`` prefix, ``_total`` counters).

The worker hands over its statistics as plain data (:class:`WorkerStats`), so this module
knows nothing of the worker and renders any snapshot, e.g. in a test:

>>> text = render_metrics(WorkerStats(accepted=3, dead_letters={("events", "malformed_json"): 1}))
>>> "featflow_events_accepted_total 3.0" in text
True
>>> 'featflow_dead_letters_total{reason="malformed_json",topic="events"} 1.0' in text
True
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One moment of a worker's counters."""

    accepted: int = 0  # events applied to feature state
    skipped_replays: int = 0  # redelivered events a checkpoint already holds
    duplicates: int = 0  # copies of an event its user holds, at new offsets (not applied)
    dead_letters: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (topic, reason)
    partitions_owned: int = 0
    outcomes_stored: int = 0
    store_errors: Mapping[str, int] = field(default_factory=dict)  # failed writes, by store
    stores_up: Mapping[str, bool] = field(default_factory=dict)  # stores that ever failed
    state_bytes: int = 0  # approximate memory of the owned partitions' window states
    state_entities: int = 0  # users they hold


@dataclass(frozen=True, slots=True)
class MerchantStats:
    """One moment of a merchant worker's counters."""

    applied: Mapping[str, int] = field(default_factory=dict)  # rows applied, by view
    late: Mapping[str, int] = field(default_factory=dict)  # rows refused as late, by view
    replays: int = 0  # second copies of rows skipped
    partitions_owned: int = 0
    dead_letters: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (topic, reason)
    store_errors: Mapping[str, int] = field(default_factory=dict)
    stores_up: Mapping[str, bool] = field(default_factory=dict)
    state_bytes: int = 0
    state_entities: int = 0  # merchants held


class _StatsCollector:
    """A prometheus_client collector over one :class:`WorkerStats`."""

    def __init__(self, stats: WorkerStats, merchants: MerchantStats):
        self.stats = stats
        self.merchants = merchants

    def collect(self) -> Iterator[Metric]:
        """The metric families, in a stable order."""
        stats = self.stats
        yield CounterMetricFamily(
            "featflow_events_accepted", "Events applied to feature state.", value=stats.accepted
        )
        yield CounterMetricFamily(
            "featflow_events_replay_skipped",
            "Redelivered events already reflected in a checkpoint.",
            value=stats.skipped_replays,
        )
        yield CounterMetricFamily(
            "featflow_events_duplicate",
            "Copies of an event its user already holds (same event_id, a producer's retry): "
            "not applied.",
            value=stats.duplicates,
        )
        letters = CounterMetricFamily(
            "featflow_dead_letters",
            "Records sent to a dead-letter topic (acknowledged), by source topic and reason.",
            labels=["topic", "reason"],
        )
        both = {**stats.dead_letters, **self.merchants.dead_letters}  # topics differ
        for (topic, reason), count in sorted(both.items()):
            letters.add_metric([topic, reason], count)
        yield letters
        yield CounterMetricFamily(
            "featflow_outcomes_stored",
            "Outcome records written to the outcomes store.",
            value=stats.outcomes_stored,
        )
        yield GaugeMetricFamily(
            "featflow_partitions_owned",
            "Partitions this worker owns.",
            value=stats.partitions_owned,
        )
        merchants = self.merchants
        held = GaugeMetricFamily(
            "featflow_state_bytes",
            "Approximate memory of the owned partitions' window states (what to size a worker "
            "by; idle entities are dropped by the expiry rules), by state.",
            labels=["state"],
        )
        entities = GaugeMetricFamily(
            "featflow_state_entities",
            "Entities the owned partitions' window states hold, by state.",
            labels=["state"],
        )
        for name, source in (("users", stats), ("merchants", merchants)):
            held.add_metric([name], source.state_bytes)
            entities.add_metric([name], source.state_entities)
        yield held
        yield entities
        errors = CounterMetricFamily(
            "featflow_store_errors",
            "Store writes that failed and were retried (store down, disk full), by store.",
            labels=["store"],
        )
        up = GaugeMetricFamily(
            "featflow_store_up",
            "1 while the store takes writes, 0 during an outage (stores that ever failed).",
            labels=["store"],
        )
        for store in sorted({*stats.store_errors, *merchants.store_errors}):
            count = stats.store_errors.get(store, 0) + merchants.store_errors.get(store, 0)
            errors.add_metric([store], count)
            ok = stats.stores_up.get(store, True) and merchants.stores_up.get(store, True)
            up.add_metric([store], float(ok))
        yield errors
        yield up
        applied = CounterMetricFamily(
            "featflow_merchant_rows_applied",
            "Rows applied to a merchant view's state, by view.",
            labels=["view"],
        )
        late = CounterMetricFamily(
            "featflow_merchant_rows_late",
            "Rows a merchant view refused: later than its lateness behind the merchant's newest.",
            labels=["view"],
        )
        for family, counts in ((applied, merchants.applied), (late, merchants.late)):
            for view, count in sorted(counts.items()):
                family.add_metric([view], count)
            yield family
        yield CounterMetricFamily(
            "featflow_merchant_rows_replay_skipped",
            "Second copies of merchant rows skipped (a user partition replayed).",
            value=merchants.replays,
        )
        yield GaugeMetricFamily(
            "featflow_merchant_partitions_owned",
            "Merchant partitions this worker owns.",
            value=merchants.partitions_owned,
        )


def render_metrics(stats: WorkerStats, merchants: MerchantStats | None = None) -> str:
    """Prometheus text exposition (format 0.0.4) of ``stats`` and the merchant worker's."""
    registry = CollectorRegistry(auto_describe=False)
    collector = _StatsCollector(stats, merchants or MerchantStats())
    registry.register(collector)  # type: ignore[arg-type]
    return generate_latest(registry).decode()
