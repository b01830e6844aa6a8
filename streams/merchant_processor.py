"""One merchant partition's hot path: ``merchant_rows`` records in, merchant feature rows out.

Pure and synchronous, like :mod:`streams.processor`: the worker, tests and benchmarks drive
the same code. A row the state refuses (later than the view's lateness behind its
merchant's newest row) is not a dead letter: its event or label was accepted and stored
for its user; it is counted (``featflow_merchant_rows_late_total``) and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from features.apply import Applied
from features.merchant_state import MerchantState, accepted
from features.views import MERCHANT_ACTIVITY, MERCHANT_OUTCOMES, View
from infra.dead_letter import DeadLetter, Reason
from infra.merchant_rows import MerchantRows, decode
from streams.processor import Record

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ViewRows:
    """One view's rows of a fetch: offline rows (every accepted one) and online rows (each
    merchant's newest)."""

    view: View
    offline: list[pa.Table] = field(default_factory=list)
    online_id: list[np.ndarray] = field(default_factory=list)
    online_time_ms: list[np.ndarray] = field(default_factory=list)
    online_features: list[np.ndarray] = field(default_factory=list)

    def add(self, rows: MerchantRows, applied: Applied) -> None:
        """Add the accepted rows of one update."""
        if not len(applied.rows):
            return
        good, table = accepted(self.view, rows, applied)
        self.offline.append(table)
        newest = applied.newest
        self.online_id.append(good.merchant_id[newest])
        self.online_time_ms.append(good.time_ms[newest])
        self.online_features.append(applied.features[newest])

    def extend(self, other: ViewRows) -> None:
        """Append another fetch part's rows (partitions own disjoint merchants)."""
        self.offline += other.offline
        self.online_id += other.online_id
        self.online_time_ms += other.online_time_ms
        self.online_features += other.online_features

    def online(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(merchant ids, times, features) to upsert, one row per merchant."""
        width = len(self.view.specs)
        ids = np.concatenate([*self.online_id, np.empty(0, np.int64)])
        times = np.concatenate([*self.online_time_ms, np.empty(0, np.int64)])
        feats = np.concatenate([*self.online_features, np.empty((0, width))])
        # a merchant updated by two batches of one fetch: its later row wins
        _, last = np.unique(ids[::-1], return_index=True)
        keep = np.sort(len(ids) - 1 - last)
        return ids[keep], times[keep], feats[keep]


@dataclass(slots=True)
class MerchantCounts:
    """Running totals of a merchant worker (``/metrics``)."""

    applied: dict[str, int] = field(default_factory=dict)  # rows applied, by view
    late: dict[str, int] = field(default_factory=dict)  # rows refused as late, by view
    replays: int = 0  # second copies skipped (a user partition replayed)

    def add(self, other: MerchantCounts) -> None:
        """Add ``other``'s counts to these."""
        for mine, theirs in ((self.applied, other.applied), (self.late, other.late)):
            for view, n in theirs.items():
                mine[view] = mine.get(view, 0) + n
        self.replays += other.replays


@dataclass(slots=True)
class MerchantEffects:
    """What one fetch must do: each merchant view's rows, and records it could not read."""

    activity: ViewRows
    outcomes: ViewRows
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: MerchantCounts = field(default_factory=MerchantCounts)

    @staticmethod
    def merge(parts: Sequence[MerchantEffects]) -> MerchantEffects:
        """One fetch's per-partition effects as one."""
        out = MerchantEffects(ViewRows(MERCHANT_ACTIVITY), ViewRows(MERCHANT_OUTCOMES))
        for part in parts:
            out.activity.extend(part.activity)
            out.outcomes.extend(part.outcomes)
            out.dead_letters += part.dead_letters
            out.counts.add(part.counts)
        return out


class MerchantProcessor:
    """One merchant partition's state and the ``merchant_rows`` offset it reflects."""

    def __init__(
        self, *, topic: str, partition: int, state: MerchantState | None = None, offset: int = -1
    ):
        self.topic = topic
        self.partition = partition
        self.state = state or MerchantState()
        self.offset = offset

    def process(self, records: Sequence[Record]) -> MerchantEffects:
        """Apply records (in offset order) to the state; return the effects to perform."""
        effects = MerchantEffects(ViewRows(MERCHANT_ACTIVITY), ViewRows(MERCHANT_OUTCOMES))
        parts = []
        for record in records:
            if record.offset <= self.offset:
                continue  # the state holds it already
            try:
                parts.append(decode(record.value))
            except ValueError as exc:
                letter = DeadLetter(
                    Reason.SCHEMA, str(exc), record.value, record.key,
                    self.topic, self.partition, record.offset,
                )  # fmt: skip
                effects.dead_letters.append(letter)
            self.offset = record.offset
        if not parts:
            return effects
        update = self.state.update(parts)  # record by record: each is deduplicated whole
        counts = effects.counts
        counts.replays = update.replays
        for view_rows, rows, applied in (
            (effects.activity, update.activity_rows, update.activity),
            (effects.outcomes, update.outcome_rows, update.outcomes),
        ):
            view_rows.add(rows, applied)
            name = view_rows.view.name
            counts.applied[name] = len(applied.rows)
            counts.late[name] = sum(1 for _, why, _ in applied.refused if why == Reason.LATE)
            if applied.refused:  # one line a fetch, not one a row: a lagging partition sends many
                row, why, detail = applied.refused[0]
                log.warning(
                    "%s: %d rows refused, the first (event %s) %s: %s",
                    name, len(applied.refused), rows.event_id[row].as_py(), why.value, detail,
                )  # fmt: skip
        return effects
