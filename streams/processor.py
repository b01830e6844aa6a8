"""One partition's hot path: raw records in, feature rows and dead letters out.

Pure and synchronous (no I/O), so the worker, tests and benchmarks drive the
same code. A processor owns its partition's window state and the offset that
state reflects; records at or below that offset are replays and are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pyarrow as pa

from features.apply import apply_events
from features.rows import offline_table
from features.spec import NO_EXPIRY, Expiry, FeatureSpec
from features.state import WindowState
from infra.dead_letter import DeadLetter
from infra.events import EventBatch, EventRules, decode_events


class Record(Protocol):
    """What the processor needs of a Kafka record (aiokafka's ConsumerRecord fits)."""

    @property
    def offset(self) -> int:
        """Position in the partition."""
        ...

    @property
    def key(self) -> bytes | None:
        """The record key (the user id as producers send it)."""
        ...

    @property
    def value(self) -> bytes | None:
        """The JSON event."""
        ...


@dataclass(slots=True)
class Counters:
    """Running totals for one partition, exported as metrics (dead letters are counted by
    reason and topic as the DLQ acknowledges them, in the worker)."""

    accepted: int = 0
    skipped_replays: int = 0
    duplicates: int = 0  # copies of an event its user holds (a producer's retry)

    def add(self, other: Counters) -> None:
        """Add ``other``'s counts to these."""
        self.accepted += other.accepted
        self.skipped_replays += other.skipped_replays
        self.duplicates += other.duplicates


@dataclass(slots=True)
class Effects:
    """What one batch must do to the outside world, in this order."""

    accepted: EventBatch  # every accepted event (offline rows, stream scoring)
    features: np.ndarray  # their feature rows [n, F]
    online_user_id: np.ndarray
    online_event_time_ms: np.ndarray
    online_features: np.ndarray
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: Counters = field(default_factory=Counters)

    def offline(self, specs: Sequence[FeatureSpec]) -> pa.Table:
        """The offline rows. Built once per fetch from the merged effects, not per
        partition: a 16-column Arrow table costs ~0.1 ms however few rows it holds, which
        dominated small fetches under a steady live load (benchmarks/freshness.py)."""
        good = self.accepted
        return offline_table(
            specs,
            event_id=good.event_id,
            entity_id=good.user_id,
            event_time_ms=good.event_time_ms,
            features=self.features,
            partition=good.partition,
            offset=good.offset,
        )


def merge_effects(parts: Sequence[Effects]) -> Effects:
    """One fetch's per-partition effects as one: a single part file and a single online
    write per fetch instead of one per partition (partitions own disjoint users, so the
    online rows stay one per user)."""
    if len(parts) == 1:
        return parts[0]
    counts = Counters()
    for part in parts:
        counts.add(part.counts)
    return Effects(
        EventBatch.concat([p.accepted for p in parts]),
        np.concatenate([p.features for p in parts]),
        np.concatenate([p.online_user_id for p in parts]),
        np.concatenate([p.online_event_time_ms for p in parts]),
        np.concatenate([p.online_features for p in parts]),
        [d for p in parts for d in p.dead_letters],
        counts,
    )


class PartitionProcessor:
    """One partition's state and the offset it reflects; turns records into effects.

    No record can make :meth:`process` raise: the decoder judges every record, the state
    update isolates a record that makes it fail (``processing_error``), and a row that
    would store a non-finite feature is refused (``features.apply``).
    """

    def __init__(
        self,
        *,
        topic: str,
        partition: int,
        specs: Sequence[FeatureSpec],
        lateness_ms: int,
        expiry: Expiry = NO_EXPIRY,
        rules: EventRules = EventRules(),
        state: WindowState | None = None,
        offset: int = -1,
    ):
        self.topic = topic
        self.partition = partition
        self.specs = tuple(specs)
        self.rules = rules
        self.state = state or WindowState(self.specs, lateness_ms=lateness_ms, expiry=expiry)
        self.offset = offset

    def process(self, records: Sequence[Record], *, now_ms: int | None = None) -> Effects:
        """Apply records (in offset order) to the state; return the effects to perform."""
        fresh = records
        if records and records[0].offset <= self.offset:  # a replay: skip what state holds
            fresh = [r for r in records if r.offset > self.offset]
        counts = Counters(skipped_replays=len(records) - len(fresh))
        empty = np.empty(0, dtype=np.int64)
        if not fresh:
            none = np.empty((0, len(self.specs)))
            return Effects(EventBatch.empty(), none, empty, empty, none, [], counts)

        batch, dead = decode_events(
            [r.value for r in fresh],
            keys=[r.key for r in fresh],
            partitions=[self.partition] * len(fresh),
            offsets=[r.offset for r in fresh],
            topic=self.topic,
            now_ms=now_ms,
            rules=self.rules,
        )
        applied = apply_events(self.state, batch)
        for row, reason, detail in applied.refused:
            record = fresh[_index_of(fresh, int(batch.offset[row]))]
            letter = DeadLetter(
                reason, detail, record.value, record.key, self.topic, self.partition, record.offset
            )
            dead.append(letter)
        good = batch if len(applied.rows) == len(batch) else batch.take(applied.rows)
        features, newest = applied.features, applied.newest
        self.offset = fresh[-1].offset
        counts.accepted = len(good)
        counts.duplicates = len(applied.duplicates)
        dead.sort(key=lambda d: d.offset)
        return Effects(
            good,
            features,
            good.user_id[newest],
            good.event_time_ms[newest],
            features[newest],
            dead,
            counts,
        )


def _index_of(records: Sequence[Record], offset: int) -> int:
    """Position of ``offset`` in records sorted by offset (binary search)."""
    lo, hi = 0, len(records)
    while lo < hi:
        mid = (lo + hi) // 2
        if records[mid].offset < offset:
            lo = mid + 1
        else:
            hi = mid
    return lo
