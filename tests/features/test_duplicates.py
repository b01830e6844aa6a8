"""A duplicate ``event_id`` (a producer's retry at a new offset) is counted once, in the
window state, the stream's processor and the backfill alike, on heavy-tailed users.

The rule (``features.kernels.dedupe``), restated here in plain Python as the oracle: in
arrival order, an event later than the allowed lateness behind its user's newest is late;
else an event whose (user, event_id) an earlier accepted event of the user had, that one
still within the lateness of the user's newest, is a duplicate; else it is accepted. The
accepted events' features are checked against pandas, which never sees the copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.apply import Columns, apply_events
from features.backfill import backfill
from features.event_files import read_events
from features.shards import MIN_ROWS_PER_SHARD
from features.spec import DEFAULT_FEATURES
from features.state import WindowState, event_keys
from infra.events import EventRules
from streams.generator import GeneratedEvents, generate_events
from streams.processor import PartitionProcessor
from testing.oracle import Stream, make_hot_stream, pandas_oracle

LATENESS_MS = 60_000
RTOL = 1e-9


def _with_copies(stream: Stream, seed: int) -> tuple[Stream, list[str]]:
    """``stream`` (ids ``e<i>``) with copies of its events inserted later in arrival order:
    retries a few events later (duplicates), copies long after (late), and ids that other
    users also use (not duplicates)."""
    rng = np.random.default_rng(seed)
    n = len(stream)
    ids = [f"e{i}" for i in range(n)]
    order = list(range(n))
    for _ in range(n // 10):  # retries: 1 to 40 events after the original
        i = int(rng.integers(0, n))
        at = order.index(i) + int(rng.integers(1, 40))
        order.insert(min(at, len(order)), i)
    for _ in range(n // 100):  # copies long after: late, or still within lateness if quiet
        i = int(rng.integers(0, n // 2))
        order.insert(int(rng.integers(order.index(i) + 1, len(order) + 1)), i)
    idx = np.array(order)
    copied = Stream(
        stream.users[idx], stream.times[idx], stream.amounts[idx], stream.merchants[idx]
    )
    names = [ids[i] for i in order]
    small = np.flatnonzero(np.isin(copied.users, np.unique(copied.users)[1:]))[:50]
    for k, j in enumerate(small):  # ids that events of other users have too
        names[j] = f"shared{k % 3}"
    return copied, names


def _kinds(stream: Stream, ids: list[str]) -> list[str]:
    newest: dict[int, int] = {}
    seen: dict[tuple[int, str], int] = {}
    kinds = []
    for u, t, i in zip(stream.users.tolist(), stream.times.tolist(), ids, strict=True):
        floor = newest[u] - LATENESS_MS if u in newest else None
        if floor is not None and t < floor:
            kinds.append("late")
        elif (u, i) in seen and (floor is None or seen[(u, i)] >= floor):
            kinds.append("duplicate")
        else:
            kinds.append("accepted")
            seen[(u, i)] = t
            newest[u] = max(newest.get(u, t), t)
    return kinds


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_duplicates_are_counted_once_across_batches_and_restores(seed: int) -> None:
    base = make_hot_stream(seed, hot_events=4000, small_users=40, small_events=1500)
    stream, ids = _with_copies(base, seed)
    kinds = np.array(_kinds(stream, ids))
    assert (kinds == "duplicate").sum() > len(base) // 50 and (kinds == "late").sum() > 0
    keys = event_keys(stream.users, pa.array(ids))
    rng = np.random.default_rng(seed)
    state = WindowState(DEFAULT_FEATURES, lateness_ms=LATENESS_MS)
    rows, features, duplicates = [], [], []
    lo = 0
    while lo < len(stream):
        hi = min(lo + int(rng.integers(1, 300)), len(stream))
        cols = Columns(
            stream.users[lo:hi], stream.times[lo:hi], stream.amounts[lo:hi],
            stream.merchants[lo:hi], keys[lo:hi],
        )  # fmt: skip
        applied = apply_events(state, cols)
        rows += (applied.rows + lo).tolist()
        features.append(applied.features)
        duplicates += (applied.duplicates + lo).tolist()
        if rng.random() < 0.3:  # a checkpoint and a restart
            state = WindowState.restore(state.snapshot(), DEFAULT_FEATURES)
        if rng.random() < 0.3:  # forgetting ids no copy can match changes no verdict
            state.sweep_ids()
        lo = hi
    assert duplicates == np.flatnonzero(kinds == "duplicate").tolist()
    # memory: after a sweep only the ids within lateness of their user's newest remain
    state.sweep_ids()
    ok_rows = np.flatnonzero(kinds == "accepted")
    newest: dict[int, int] = {}
    for r in ok_rows.tolist():
        u = int(stream.users[r])
        newest[u] = max(newest.get(u, int(stream.times[r])), int(stream.times[r]))
    live = {(int(stream.users[r]), ids[r]) for r in ok_rows
            if stream.times[r] >= newest[int(stream.users[r])] - LATENESS_MS}  # fmt: skip
    assert state.n_recent_ids == len(live)
    assert rows == np.flatnonzero(kinds == "accepted").tolist()
    ok = kinds == "accepted"
    clean = Stream(*(a[ok] for a in (stream.users, stream.times, stream.amounts, stream.merchants)))
    np.testing.assert_allclose(  # atol: a std of equal amounts is 1e-11 from 0 (sums)
        np.concatenate(features), pandas_oracle(clean, DEFAULT_FEATURES), rtol=RTOL, atol=1e-9
    )


def _take(ev: GeneratedEvents, idx: np.ndarray) -> GeneratedEvents:
    return GeneratedEvents(
        [ev.event_id[i] for i in idx], ev.user_id[idx], ev.merchant_id[idx], ev.amount[idx],
        ev.event_time_ms[idx],
    )  # fmt: skip


def test_stream_and_backfill_agree_on_duplicates(tmp_path: Path) -> None:
    """The same events with retries: the stream's processor (fetch by fetch) and the
    backfill on one and on three threads give the same rows, and no exact copy twice."""
    n = 3 * MIN_ROWS_PER_SHARD + 3000
    ev = generate_events(n, users=2000, start_ms=1_767_225_600_000, mean_gap_ms=50, seed=9,
                         zipf=1.6)  # fmt: skip
    rng = np.random.default_rng(9)
    order = list(range(n))
    for i in rng.choice(n, n // 20, replace=False).tolist():
        order.insert(order.index(i) + int(rng.integers(1, 50)), i)
    copied = _take(ev, np.array(order))
    pq.write_table(copied.table(), tmp_path / "events.parquet")
    rows = read_events(tmp_path / "events.parquet", rules=EventRules())
    one = backfill(rows, lateness_ms=LATENESS_MS, threads=1)
    three = backfill(rows, lateness_ms=LATENESS_MS, threads=3)
    assert three.table.equals(one.table) and three.duplicates == one.duplicates > n // 40

    processor = PartitionProcessor(
        topic="events", partition=0, specs=DEFAULT_FEATURES, lateness_ms=LATENESS_MS
    )
    records = list(copied.records())
    stream_ids, stream_features, duplicates = [], [], 0
    lo = 0
    while lo < len(records):
        hi = min(lo + int(rng.integers(1, 2000)), len(records))
        fetch = [_Rec(k, v, o) for o, (k, v) in enumerate(records[lo:hi], start=lo)]
        effects = processor.process(fetch, now_ms=int(ev.event_time_ms.max()) + 1)
        stream_ids += effects.accepted.ids()
        stream_features.append(effects.features)
        duplicates += effects.counts.duplicates
        lo = hi
    table = one.table
    assert stream_ids == table.column("event_id").to_pylist()
    assert duplicates == one.duplicates
    names = [s.name for s in DEFAULT_FEATURES]
    np.testing.assert_allclose(
        np.concatenate(stream_features),
        np.column_stack([table.column(c).to_numpy().astype(float) for c in names]),
        rtol=RTOL,
    )
    assert len(set(stream_ids)) == len(stream_ids)  # every exact copy dropped


class _Rec:
    def __init__(self, key: bytes, value: bytes, offset: int):
        self.key, self.value, self.offset = key, value, offset
