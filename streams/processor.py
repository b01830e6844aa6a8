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

from featflow.settings import Settings
from features.rows import offline_table
from features.spec import FeatureSpec
from features.state import WindowState
from streams.dead_letter import DeadLetter, Reason
from streams.events import EventBatch, decode_events


class Record(Protocol):
    """What the processor needs of a Kafka record (aiokafka's ConsumerRecord fits)."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(slots=True)
class Counters:
    """Running totals for one partition, exported as metrics."""

    accepted: int = 0
    dead_lettered: int = 0
    late: int = 0
    skipped_replays: int = 0

    def add(self, other: Counters) -> None:
        self.accepted += other.accepted
        self.dead_lettered += other.dead_lettered
        self.late += other.late
        self.skipped_replays += other.skipped_replays


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
            user_id=good.user_id,
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
    def __init__(
        self,
        *,
        topic: str,
        partition: int,
        specs: Sequence[FeatureSpec],
        settings: Settings,
        state: WindowState | None = None,
        offset: int = -1,
    ):
        self.topic = topic
        self.partition = partition
        self.specs = tuple(specs)
        self.settings = settings
        self.state = state or WindowState(
            self.specs, lateness_ms=int(settings.allowed_lateness_s * 1000)
        )
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
            max_future_skew_ms=int(self.settings.max_future_skew_s * 1000),
            max_record_bytes=self.settings.max_record_bytes,
        )
        result = self.state.update(
            batch.user_id, batch.event_time_ms, batch.amount, batch.merchant_id
        )
        late = result.late
        n_late = int(late.sum())
        good, features, newest = batch, result.features, result.latest_mask
        if n_late:
            lateness = self.settings.allowed_lateness_s
            for i in np.flatnonzero(late):
                record = fresh[_index_of(fresh, int(batch.offset[i]))]
                dead.append(
                    DeadLetter(
                        Reason.LATE,
                        f"event_time {int(batch.event_time_ms[i])} ms is more than "
                        f"{lateness:g} s behind the user's newest event",
                        record.value,
                        record.key,
                        self.topic,
                        self.partition,
                        record.offset,
                    )
                )
            ok = ~late
            good, features, newest = batch.take(ok), features[ok], newest[ok]
        self.offset = fresh[-1].offset
        counts.accepted = len(good)
        counts.late = n_late
        counts.dead_lettered = len(dead)
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
