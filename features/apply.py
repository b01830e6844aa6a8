"""Applying a validated batch of events to a window state: the one step stream and backfill share.

Besides the state's own verdict (late events), two guards make sure that what reaches the
stores is sound, whatever the input:

- a record that makes the state update raise is pinned down by :func:`infra.isolation.isolate`
  and refused as ``processing_error`` (the update validates before it mutates, so the rest
  of the batch is applied exactly once, in order);
- a row with a non-finite feature is refused as ``out_of_range``: no store ever holds inf or
  NaN. Amounts are bounded (``EventRules.max_amount``) so this should never fire; it is
  the last line, tested by driving the kernels past the bound.

Given the events' ids, a copy of an event its user already holds (a producer's retry) is
a duplicate: no row, no refusal, listed in ``Applied.duplicates``
(``features.kernels.dedupe``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from features.state import BatchResult, WindowState, event_keys
from infra.dead_letter import Reason
from infra.events import EventBatch
from infra.isolation import describe, isolate


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of :func:`apply_events`, indexed by rows of the input batch."""

    rows: np.ndarray  # int64: accepted rows of the batch, in order
    features: np.ndarray  # float64 [len(rows), F], all finite
    newest: np.ndarray  # bool [len(rows)]: each user's newest row (what the online store holds)
    refused: list[tuple[int, Reason, str]]  # (batch row, reason, detail), by row
    duplicates: np.ndarray  # int64: batch rows that copy an event the user holds

    @staticmethod
    def merge(parts: list[tuple[np.ndarray, Applied]]) -> Applied:
        """One :class:`Applied` of a batch from those of its parts, each given with the
        batch rows it was made of (``features/shards.py``: disjoint sets of entities, so
        each part's verdicts, including each user's newest row, hold for the whole)."""
        rows = np.concatenate([taken[a.rows] for taken, a in parts])
        order = np.argsort(rows, kind="stable")
        features = np.concatenate([a.features for _, a in parts])[order]
        newest = np.concatenate([a.newest for _, a in parts])[order]
        refused = [(int(taken[r]), why, d) for taken, a in parts for r, why, d in a.refused]
        refused.sort(key=lambda r: r[0])
        duplicates = np.sort(np.concatenate([taken[a.duplicates] for taken, a in parts]))
        return Applied(rows[order], features, newest, refused, duplicates.astype(np.int64))


class Columns(NamedTuple):
    """The event columns the window state reads, in arrival order; ``event_key`` (the
    events' id keys, ``features.state.event_keys``) turns on duplicate detection, ``clock``
    (each event's partition clock) is for a state that is not one partition's (a backfill:
    ``WindowState.update``)."""

    user_id: np.ndarray  # int64
    event_time_ms: np.ndarray  # int64
    amount: np.ndarray  # float64
    merchant_id: np.ndarray  # int64
    event_key: np.ndarray | None = None  # int64
    clock: np.ndarray | None = None  # int64

    @staticmethod
    def of(batch: EventBatch) -> Columns:
        """The columns of ``batch`` (no copy), with its events' id keys."""
        keys = event_keys(batch.user_id, batch.arrow_ids())
        return Columns(batch.user_id, batch.event_time_ms, batch.amount, batch.merchant_id, keys)

    def take(self, rows: np.ndarray) -> Columns:
        """These rows (an index array), in the order given."""
        return Columns(*(None if c is None else c[rows] for c in self))


def apply_events(state: WindowState, batch: EventBatch | Columns) -> Applied:
    """Update ``state`` with ``batch`` in arrival order; see the module docstring."""
    cols = batch if isinstance(batch, Columns) else Columns.of(batch)
    refused: list[tuple[int, Reason, str]] = []

    def step(lo: int, hi: int) -> BatchResult:
        keys = None if cols.event_key is None else cols.event_key[lo:hi]
        clocks = None if cols.clock is None else cols.clock[lo:hi]
        return state.update(*(c[lo:hi] for c in cols[:4]), event_keys=keys, clocks=clocks)

    def failed(row: int, exc: Exception) -> None:
        refused.append((row, Reason.PROCESSING_ERROR, describe(exc)))

    n = len(cols.user_id)
    parts = isolate(n, step, failed)
    if len(parts) == 1 and parts[0][:2] == (0, n):  # the common case
        result = parts[0][2]
        rows = np.arange(n, dtype=np.int64)
        features, late, newest = result.features, result.late, result.latest_mask
        behind = result.behind_clock if result.behind_clock is not None else np.zeros(n, bool)
        dup = result.duplicate if result.duplicate is not None else np.zeros(n, dtype=bool)
        unheld = np.zeros(n, dtype=bool)
        for j, why in result.failed:
            unheld[j] = True
            refused.append((j, Reason.PROCESSING_ERROR, why))
    else:
        rows, features, late, unheld, newest, dup, behind = _join(
            parts, cols, len(state.specs), refused
        )

    lateness_s = state.lateness_ms / 1000
    delay_s = (state.expiry.max_delay_ms or 0) / 1000
    for j in np.flatnonzero(late).tolist():
        t_ms = int(cols.event_time_ms[rows[j]])
        detail = (
            f"event_time {t_ms} ms is more than {delay_s:g} s behind its partition's newest event"
            if behind[j]
            else f"event_time {t_ms} ms is more than {lateness_s:g} s behind its entity's "
            "newest event"
        )
        refused.append((int(rows[j]), Reason.LATE, detail))
    finite = np.isfinite(features).all(axis=1)
    for j in np.flatnonzero(~finite & ~late & ~unheld & ~dup).tolist():
        col = int(np.flatnonzero(~np.isfinite(features[j]))[0])
        detail = f"feature {state.feature_names[col]} would be {features[j, col]}; not stored"
        refused.append((int(rows[j]), Reason.OUT_OF_RANGE, detail))
    duplicates = rows[dup]
    keep = finite & ~late & ~unheld & ~dup
    if not keep.all():
        rows, features, newest = rows[keep], features[keep], newest[keep]
    refused.sort(key=lambda r: r[0])
    return Applied(rows, features, newest, refused, duplicates)


def _join(
    parts: list[tuple[int, int, BatchResult]],
    cols: Columns,
    width: int,
    refused: list[tuple[int, Reason, str]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, features, late, unheld, newest, duplicate, behind the clock) of a batch applied
    in several updates."""
    rows = np.concatenate([np.arange(lo, hi) for lo, hi, _ in parts] + [np.empty(0, np.int64)])
    features = np.concatenate([r.features for *_, r in parts] + [np.empty((0, width))])
    late = np.concatenate([r.late for *_, r in parts] + [np.empty(0, bool)])
    dup = np.concatenate(
        [r.duplicate if r.duplicate is not None else np.zeros(len(r.late), bool) for *_, r in parts]
        + [np.empty(0, bool)]
    )
    behind = np.concatenate(
        [r.behind_clock if r.behind_clock is not None else np.zeros(len(r.late), bool)
         for *_, r in parts] + [np.empty(0, bool)]
    )  # fmt: skip
    tmax = np.concatenate([r.entity_max_time_ms for *_, r in parts] + [np.empty(0, np.int64)])
    unheld = np.zeros(len(rows), dtype=bool)
    start = 0
    for lo, hi, result in parts:
        for j, why in result.failed:
            unheld[start + j] = True
            refused.append((lo + j, Reason.PROCESSING_ERROR, why))
        start += hi - lo
    rows = rows.astype(np.int64)
    users, times = cols.user_id[rows], cols.event_time_ms[rows]
    newest = _newest(users, times, late | unheld | dup, tmax)
    return rows, features, late, unheld, newest, dup, behind


def _newest(users: np.ndarray, times: np.ndarray, late: np.ndarray, tmax: np.ndarray) -> np.ndarray:
    """Each user's last-arrived accepted row at the user's final max event time, when the
    batch was applied in several updates (each update's own mask only knows its part)."""
    newest = np.zeros(len(users), dtype=bool)
    if not len(users):
        return newest
    # tmax after each row's update only grows, so a user's final max is its largest.
    order = np.argsort(users, kind="stable")
    u = users[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    final = np.repeat(np.maximum.reduceat(tmax[order], starts), np.diff(np.r_[starts, len(u)]))
    final_of_row = np.empty_like(final)
    final_of_row[order] = final
    candidates = np.flatnonzero(~late & (times == final_of_row))
    if candidates.size:
        rev = candidates[::-1]
        _, first = np.unique(users[rev], return_index=True)
        newest[rev[first]] = True
    return newest
