"""A merchant partition's state: the two merchant views' window states and the source
offsets they reflect.

Rows arrive re-keyed by merchant (``infra.merchant_rows``), from every user partition and
from the labels. Transactions go to the ``merchant_activity`` state (keyed by merchant, the
paying user in the second id column), labels to the ``merchant_outcomes`` state at their
``outcome_time`` (the label as the amount). Each state is a :class:`WindowState`, so the
merchant features have the kernels, the lateness rule and the oracle of the user features:
a row's values are as of its own time over the rows that arrived before it.

No label leaks by construction: a ``merchant_outcomes`` row at time t counts labels with
``outcome_time`` in ``(t - 7 days, t]`` only, and training joins an event to the newest
such row strictly before the event's time (``inference.train``).

Replays are skipped by source offset: ``seen`` holds, per (source, source partition), the
newest source offset applied, and a row at or below it is a second copy.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from features.apply import Applied, Columns, apply_events
from features.rows import offline_table
from features.state import Snapshot, WindowState
from features.views import MERCHANT_ACTIVITY, MERCHANT_OUTCOMES, View
from infra.merchant_rows import EVENTS, OUTCOMES, MerchantRows

_MAGIC = "featflow-merchant-state-1"


@dataclass(frozen=True, slots=True)
class MerchantUpdate:
    """What one batch of rows did: each view's rows (in arrival order) and what the state made
    of them (``Applied.rows`` index those rows; refused rows are late at their merchant)."""

    activity_rows: MerchantRows
    activity: Applied
    outcome_rows: MerchantRows
    outcomes: Applied
    replays: int  # rows skipped as second copies


@dataclass(frozen=True, slots=True)
class MerchantSnapshot:
    """A detached copy of a :class:`MerchantState` (encoded in a thread by the worker)."""

    activity: Snapshot
    outcomes: Snapshot
    seen: dict[tuple[int, int], int]

    def encode(self) -> bytes:
        """Bytes :meth:`MerchantState.restore` reads (an ``.npz`` of the two states)."""
        header = {"magic": _MAGIC, "seen": [[s, p, o] for (s, p), o in self.seen.items()]}
        buf = io.BytesIO()
        np.savez(
            buf,
            header=np.array(json.dumps(header)),
            activity=np.frombuffer(self.activity.encode(), dtype=np.uint8),
            outcomes=np.frombuffer(self.outcomes.encode(), dtype=np.uint8),
        )
        return buf.getvalue()


def accepted(view: View, rows: MerchantRows, applied: Applied) -> tuple[MerchantRows, pa.Table]:
    """The rows of one view's update that the state accepted, and their offline table (the
    source record's partition and offset in ``kafka_partition``/``kafka_offset``): what the
    merchant worker and the merchant backfill both write."""
    good = rows.take(applied.rows)
    table = offline_table(
        view.specs,
        event_id=good.event_id,
        entity_id=good.merchant_id,
        event_time_ms=good.time_ms,
        features=applied.features,
        partition=good.source_partition,
        offset=good.source_offset,
        join_key=view.join_key,
    )
    return good, table


class MerchantState:
    """The state of one merchant partition."""

    def __init__(
        self,
        activity: WindowState | None = None,
        outcomes: WindowState | None = None,
        seen: dict[tuple[int, int], int] | None = None,
    ):
        self.activity = activity or WindowState(
            MERCHANT_ACTIVITY.specs, lateness_ms=MERCHANT_ACTIVITY.lateness_ms
        )
        self.outcomes = outcomes or WindowState(
            MERCHANT_OUTCOMES.specs, lateness_ms=MERCHANT_OUTCOMES.lateness_ms
        )
        self.seen: dict[tuple[int, int], int] = dict(seen or {})

    @property
    def nbytes(self) -> int:
        """Approximate memory of both views' states (:attr:`WindowState.nbytes`)."""
        return self.activity.nbytes + self.outcomes.nbytes

    @property
    def n_entities(self) -> int:
        """Merchants held by the activity view (the outcomes view holds a subset)."""
        return self.activity.n_entities

    def update(self, records: MerchantRows | Sequence[MerchantRows]) -> MerchantUpdate:
        """Apply records (each a ``merchant_rows`` record's rows, or one batch) in arrival
        order, skipping second copies; one result per view."""
        parts = [records] if isinstance(records, MerchantRows) else list(records)
        total = sum(len(part) for part in parts)
        rows = MerchantRows.concat([part.take(self._fresh(part)) for part in parts])
        txn = rows.take(rows.source == EVENTS)
        lab = rows.take(rows.source == OUTCOMES)
        activity = apply_events(
            self.activity, Columns(txn.merchant_id, txn.time_ms, txn.value, txn.user_id)
        )
        zeros = np.zeros(len(lab), dtype=np.int64)
        outcomes = apply_events(
            self.outcomes, Columns(lab.merchant_id, lab.time_ms, lab.value, zeros)
        )
        return MerchantUpdate(txn, activity, lab, outcomes, total - len(rows))

    def _fresh(self, record: MerchantRows) -> np.ndarray:
        """Mask of one record's rows above their source partition's newest offset applied
        before the record; then advances the marks. A writer sends a source partition's
        offsets in order across records (one record per fetch, fetches in offset order), but
        orders each record's rows by time, so within a record the offsets may go back."""
        fresh = np.ones(len(record), dtype=bool)
        if not len(record):
            return fresh
        part = record.source_partition.astype(np.int64) & 0xFFFFFFFF  # -1: a file's rows
        key = record.source.astype(np.int64) << 32 | part
        for k in np.unique(key).tolist():
            mine = np.flatnonzero(key == k)
            source = (k >> 32, int(record.source_partition[mine[0]]))
            mark = self.seen.get(source, -1)
            offsets = record.source_offset[mine]
            fresh[mine] = offsets > mark  # at or below: a second copy, sent again after a crash
            self.seen[source] = max(mark, int(offsets.max()))
        return fresh

    def capture(self) -> MerchantSnapshot:
        """Private copies of the live state (encode later, elsewhere)."""
        return MerchantSnapshot(self.activity.capture(), self.outcomes.capture(), dict(self.seen))

    def snapshot(self) -> bytes:
        """The encoded state."""
        return self.capture().encode()

    @classmethod
    def restore(cls, data: bytes) -> MerchantState:
        """Rebuild from :meth:`snapshot`; ``ValueError`` for anything else."""
        try:
            z = np.load(io.BytesIO(data), allow_pickle=False)
            header = json.loads(str(z["header"]))
            activity, outcomes = z["activity"].tobytes(), z["outcomes"].tobytes()
        except Exception as exc:
            raise ValueError(f"not a merchant state snapshot: {exc}") from exc
        if header.get("magic") != _MAGIC:
            raise ValueError("not a merchant state snapshot")
        return cls(
            WindowState.restore(
                activity, MERCHANT_ACTIVITY.specs, lateness_ms=MERCHANT_ACTIVITY.lateness_ms
            ),
            WindowState.restore(
                outcomes, MERCHANT_OUTCOMES.specs, lateness_ms=MERCHANT_OUTCOMES.lateness_ms
            ),
            {(int(s), int(p)): int(o) for s, p, o in header["seen"]},
        )
