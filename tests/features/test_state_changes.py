"""Checkpoints of changes (``WindowState.checkpoint(changes=True)``): a whole checkpoint and
the changes after it restore to a state that goes on exactly as the uninterrupted one,
whatever entities were updated, promoted, dropped idle or returned in between."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import features.state
from features.kernels import Tuning
from features.state import WindowState, event_keys
from infra.partitioner import partition_of
from testing.oracle import Stream
from tests.features.test_expiry import EXPIRY, LATENESS_MS, PARTITIONS, SPECS, _case


def _with_copies(stream: Stream, seed: int) -> tuple[Stream, np.ndarray]:
    """The stream with 2 % of its events sent again a few events later (a producer's
    retries: same user, id and values), and every event's id key."""
    rng = np.random.default_rng(seed)
    n = len(stream)
    order = list(range(n))
    for i in sorted(rng.choice(n - 5, n // 50, replace=False).tolist(), reverse=True):
        order.insert(i + int(rng.integers(1, 5)), i)
    take = np.array(order)
    ids = pa.array([f"e{i}" for i in take])
    copied = Stream(stream.users[take], stream.times[take], stream.amounts[take],
                    stream.merchants[take])  # fmt: skip
    return copied, event_keys(copied.users, ids)


def _keys(state: WindowState) -> set[int]:
    return set(state.capture().keys.tolist())


def _run(stream: Stream, keys: np.ndarray, rows: np.ndarray, seed: int | None,
         tuning: Tuning) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:  # fmt: skip
    """Feed ``rows`` in random batches; with a ``seed``, checkpoint (whole or changes) and
    restore from the chain at random points. Returns (features, late, duplicate, counts)."""
    rng = np.random.default_rng(seed or 0)
    state = WindowState(SPECS, lateness_ms=LATENESS_MS, expiry=EXPIRY, tuning=tuning)
    base, changes = state.checkpoint(changes=False).encode(), []
    out = np.full((len(rows), len(SPECS)), np.nan)
    late = np.zeros(len(rows), bool)
    dup = np.zeros(len(rows), bool)
    counts = {"changes": 0, "restores": 0, "removed": 0, "purged": 0}
    start = 0
    while start < len(rows):
        take = rows[start : start + int(rng.integers(1, 80))]
        res = state.update(stream.users[take], stream.times[take], stream.amounts[take],
                           stream.merchants[take], keys[take])  # fmt: skip
        at = slice(start, start + len(take))
        out[at], late[at], dup[at] = res.features, res.late, res.duplicate
        start += len(take)
        if seed is None:
            continue
        if rng.random() < 0.3:
            counts["purged"] += state.purged
            state.purged = 0
            whole = rng.random() < 0.15
            snap = state.checkpoint(changes=not whole)
            if whole:
                base, changes = snap.encode(), []
            else:
                counts["changes"] += 1
                counts["removed"] += len(snap.removed)
                assert len(snap.keys) <= state.n_entities
                changes.append(snap.encode())
            if rng.random() < 0.3:  # the worker dies after this checkpoint
                counts["restores"] += 1
                restored = WindowState.restore_chain(base, changes, SPECS, expiry=EXPIRY,
                                                     tuning=tuning)  # fmt: skip
                # the same entities (the dropped ones gone), the same rows
                assert _keys(restored) == _keys(state)
                assert restored.n_live_rows == state.n_live_rows
                state = restored
    return out, late, dup, counts


@pytest.mark.parametrize("seed", [3, 4])
def test_chains_of_changes_restore_exactly(
    seed: int, tuning: Tuning, monkeypatch: pytest.MonkeyPatch
) -> None:
    # drop idle users as soon as any may go: many drops, each a change to carry
    monkeypatch.setattr(features.state, "_PURGE_MIN", 1)
    monkeypatch.setattr(features.state, "_PURGE_SHARE", 1_000_000)
    stream = _case(1)[0]
    copied, keys = _with_copies(stream, seed)
    home = partition_of(copied.users, PARTITIONS)  # each user's partition, as the stream's
    totals = {"changes": 0, "restores": 0, "removed": 0, "purged": 0}
    for p in range(PARTITIONS):
        rows = np.flatnonzero(home == p)
        want = _run(copied, keys, rows, None, tuning)
        got = _run(copied, keys, rows, seed + p, tuning)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[2], want[2])
        np.testing.assert_array_equal(got[0], want[0])  # bit for bit, NaN rows included
        for name, value in got[3].items():
            totals[name] += value
    # the chains carried what they are for: changes, restores from them, dropped users,
    # and copies found across restores
    assert totals["changes"] > 50 and totals["restores"] > 10, totals
    assert totals["removed"] > 0, totals


def test_a_checkpoint_of_changes_costs_what_changed() -> None:
    rng = np.random.default_rng(0)
    state = WindowState(SPECS, lateness_ms=LATENESS_MS)
    users = rng.integers(1, 20_001, 100_000).astype(np.int64)
    times = np.sort(rng.integers(0, 3_600_000, 100_000)) + 1_700_000_000_000
    state.update(users, times, np.ones(100_000), np.ones(100_000, np.int64))
    whole = state.checkpoint(changes=False)
    assert len(whole.keys) == state.n_entities
    few = np.array([5, 7, 5, 19_999], np.int64)
    state.update(few, np.full(4, times[-1] + 1), np.ones(4), np.ones(4, np.int64))
    changed = state.checkpoint(changes=True)
    assert sorted(changed.keys.tolist()) == [5, 7, 19_999]
    assert len(changed.encode()) * 100 < len(whole.encode())
    assert len(state.checkpoint(changes=True).keys) == 0  # nothing since


def test_changes_alone_or_of_another_state_are_refused() -> None:
    state = WindowState(SPECS, lateness_ms=LATENESS_MS)
    state.update(np.array([1]), np.array([5]), np.array([2.0]), np.array([3]))
    changes = state.checkpoint(changes=True).encode()
    with pytest.raises(ValueError, match="without its base"):
        WindowState.restore(changes, SPECS)
    base = state.checkpoint(changes=False).encode()
    with pytest.raises(ValueError, match="not a checkpoint of changes"):
        WindowState.restore_chain(base, [base], SPECS)
