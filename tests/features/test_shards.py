"""Shards for the threaded backfill: a partition of the rows by user, balanced under skew,
and a backfill on several threads that equals the one-thread backfill row for row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.backfill import backfill
from features.event_files import read_events
from features.shards import MIN_ROWS_PER_SHARD, balanced_shards, bucket_of
from features.spec import DEFAULT_LATENESS_MS
from infra.events import EventRules
from streams.generator import generate_events


def _check_partition(users: np.ndarray, parts: list[np.ndarray]) -> None:
    every = np.concatenate(parts)
    assert np.array_equal(np.sort(every), np.arange(len(users))), "each row exactly once"
    for p in parts:
        assert np.all(np.diff(p) > 0), "input order kept"
    owners = {}
    for s, p in enumerate(parts):
        for u in np.unique(users[p]).tolist():
            assert owners.setdefault(u, s) == s, f"user {u} in two shards"


@settings(max_examples=200, deadline=None)
@given(
    users=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=0, max_size=300).map(
        lambda xs: np.array(xs, dtype=np.int64)
    ),
    shards=st.integers(1, 6),
    min_rows=st.integers(1, 40),
)
def test_a_partition_by_user(users: np.ndarray, shards: int, min_rows: int) -> None:
    parts = balanced_shards(users, shards, min_rows=min_rows)
    assert 1 <= len(parts) <= max(1, min(shards, len(users) // min_rows))
    _check_partition(users, parts)


@pytest.mark.parametrize("shards", [2, 3, 4])
def test_balanced_under_zipf(shards: int) -> None:
    ev = generate_events(200_000, users=20_000, start_ms=0, mean_gap_ms=100, seed=3, zipf=1.6)
    parts = balanced_shards(ev.user_id, shards)
    _check_partition(ev.user_id, parts)
    n = len(ev.user_id)
    buckets = np.bincount(bucket_of(ev.user_id))
    small = buckets[buckets * 4 * shards <= n].max()
    loads = sorted((len(p) for p in parts), reverse=True)
    if buckets.max() > n / shards:  # the busiest user's bucket exceeds a share: alone
        assert loads[0] == buckets.max()
        n, shards, loads = n - loads[0], shards - 1, loads[1:]
    # the rest: none above its equal share by more than one small bucket
    assert max(loads) <= n / shards + small
    assert min(loads) >= n / shards - small * shards


def test_small_batches_stay_on_one_thread() -> None:
    users = np.arange(MIN_ROWS_PER_SHARD * 2 - 1)
    assert len(balanced_shards(users, 8)) == 1


def test_threaded_backfill_equals_one_thread(tmp_path: Path) -> None:
    """Skewed users, disorder beyond the lateness (late rows) and invalid rows (rejects):
    the table and the rejects are the same on 1 and on 3 threads."""
    n = 3 * MIN_ROWS_PER_SHARD + 5_000
    ev = generate_events(
        n, users=3_000, start_ms=1_767_225_600_000, mean_gap_ms=50, seed=8, zipf=1.6
    )
    rng = np.random.default_rng(8)
    times = ev.event_time_ms + rng.integers(0, 3 * DEFAULT_LATENESS_MS, size=n)  # late rows
    amount = ev.amount.copy()
    amount[rng.choice(n, 25, replace=False)] = -1.0  # refused by validation
    pq.write_table(ev.table(amount=amount, event_time_ms=times), tmp_path / "events.parquet")
    rows = read_events(tmp_path / "events.parquet", rules=EventRules())
    one = backfill(rows, lateness_ms=DEFAULT_LATENESS_MS, threads=1)
    three = backfill(rows, lateness_ms=DEFAULT_LATENESS_MS, threads=3)
    assert len(balanced_shards(rows.batch.user_id, 3)) == 3
    reasons = one.reasons()
    assert (
        reasons.get("late", 0) > 100
        and reasons.get("out_of_range", 0) + reasons.get("invalid_value", 0) >= 1
    ), reasons
    assert three.table.equals(one.table)
    assert [(d.offset, d.reason, d.detail) for d in three.rejected] == [
        (d.offset, d.reason, d.detail) for d in one.rejected
    ]
