"""A generated world for retraining tests: offline rows and stored outcomes, a period at a
time, with or without the generator's change point half way."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from features.backfill import backfill
from features.event_files import from_records
from features.offline import OfflineWriter
from infra.config import Stores
from infra.outcomes import decode_outcomes
from streams.generator import generate_events, generate_outcomes

T0 = 1_767_225_600_000
N = 24_000
CHANGE = T0 + N * 500  # half way (mean gap 1 s)


class World:
    """Offline rows and stored outcomes of a generated stream, written a period at a time."""

    def __init__(self, stores: Stores, change: bool) -> None:
        change_ms = CHANGE if change else None
        events = generate_events(
            N, users=400, start_ms=T0, mean_gap_ms=1000, seed=21,
            change_ms=change_ms, amount_factor=1.8,
        )  # fmt: skip
        outcomes = generate_outcomes(events, seed=21, change_ms=change_ms)
        self.rows = backfill(
            from_records([v for _, v in events.records()]), lateness_ms=60_000
        ).table
        values = [v for _, v in outcomes.records()]
        self.labels, dead = decode_outcomes(
            values, partitions=[0] * len(values), offsets=list(range(len(values)))
        )
        assert not dead
        self.stores = stores

    def write(self, start_ms: int, end_ms: int) -> None:
        """The period's feature rows and the labels of its events."""
        t = pc.cast(self.rows.column("event_timestamp"), pa.int64())
        rows = self.rows.filter(pc.and_(pc.greater_equal(t, start_ms), pc.less(t, end_ms)))
        ids = rows.column("event_id")
        labels = self.labels.filter(pc.is_in(self.labels.column("event_id"), ids))
        OfflineWriter(self.stores.offline_dir).write(rows, tag=f"{start_ms}")
        OfflineWriter(self.stores.outcomes_dir).write(labels, tag=f"{start_ms}")
