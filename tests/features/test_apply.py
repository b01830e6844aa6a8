"""One bad record never stops a batch, and no non-finite feature reaches a store.

Checked against the pandas oracle over the records that were applied, on heavy-tailed
streams (one user holds most of the rows).
"""

from __future__ import annotations

import numpy as np
import pytest

from features import kernels as K
from features.apply import apply_events
from features.spec import DEFAULT_FEATURES
from features.state import WindowState
from infra.dead_letter import Reason
from infra.events import AMOUNT_LIMIT, EventBatch
from streams.processor import PartitionProcessor
from testing.oracle import Stream, make_hot_stream, pandas_oracle

RTOL = 1e-9
LATENESS_MS = 60_000


def _batch(stream: Stream) -> EventBatch:
    n = len(stream)
    return EventBatch(
        [f"e{i}" for i in range(n)],
        stream.users,
        stream.merchants,
        stream.amounts,
        stream.times,
        np.zeros(n, np.int32),
        np.arange(n, dtype=np.int64),
    )


def _expected_newest(stream: Stream) -> np.ndarray:
    """Independent of the kernels: per user, the last-arrived row at the user's max time."""
    newest = np.zeros(len(stream), dtype=bool)
    for user in np.unique(stream.users):
        rows = np.flatnonzero(stream.users == user)
        at_max = rows[stream.times[rows] == stream.times[rows].max()]
        newest[at_max[-1]] = True
    return newest


class PoisonState(WindowState):
    """A window state that refuses any batch holding ``poison`` users, before changing
    anything (the contract ``isolate`` relies on), like a validation error would."""

    poison: frozenset[int] = frozenset()

    def update(self, user_ids, times_ms, amounts, merchants, event_keys=None, *, clocks=None):  # type: ignore[override]
        hit = set(np.asarray(user_ids).tolist()) & self.poison
        if hit:
            raise ValueError(f"cannot take user {min(hit)}")
        return super().update(user_ids, times_ms, amounts, merchants, event_keys, clocks=clocks)


@pytest.mark.parametrize("n_poison", [1, 3])
def test_a_record_that_makes_the_update_raise_is_isolated(n_poison: int) -> None:
    stream = make_hot_stream(5, hot_events=3000, small_users=30, small_events=600)
    users, counts = np.unique(stream.users, return_counts=True)
    poison = users[np.argsort(counts)][:n_poison]  # users with few rows: isolated one by one
    state = PoisonState(DEFAULT_FEATURES, lateness_ms=LATENESS_MS)
    state.poison = frozenset(poison.tolist())

    applied = apply_events(state, _batch(stream))

    bad = np.isin(stream.users, poison)
    assert [r for r, _, _ in applied.refused] == np.flatnonzero(bad).tolist()
    assert {reason for _, reason, _ in applied.refused} == {Reason.PROCESSING_ERROR}
    assert all(d.startswith("ValueError: cannot take user") for *_, d in applied.refused)
    assert applied.rows.tolist() == np.flatnonzero(~bad).tolist()  # the rest, once, in order
    clean = Stream(
        *(a[~bad] for a in (stream.users, stream.times, stream.amounts, stream.merchants))
    )
    np.testing.assert_allclose(applied.features, pandas_oracle(clean, DEFAULT_FEATURES), rtol=RTOL)
    assert applied.newest.tolist() == _expected_newest(clean).tolist()


def test_an_event_the_state_cannot_hold_is_refused_and_the_rest_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An entity whose history outgrows the largest block: its later events are refused
    (processing_error); every other user's rows are exact."""
    monkeypatch.setattr(K, "MAX_BLOCK", 200)  # the real limit is 2**31 rows of one entity
    stream = make_hot_stream(9, hot_events=2000, span_ms=3_600_000, small_events=500)
    state = WindowState(DEFAULT_FEATURES, lateness_ms=LATENESS_MS, initial_arena=256)

    applied = apply_events(state, _batch(stream))

    refused = np.array([r for r, _, _ in applied.refused], dtype=np.int64)
    hot = np.unique(stream.users, return_counts=True)
    hot_user = hot[0][np.argmax(hot[1])]
    assert len(refused) > 1000 and (stream.users[refused] == hot_user).all()
    assert all(
        reason is Reason.PROCESSING_ERROR and "OverflowError" in detail
        for _, reason, detail in applied.refused
    )
    kept = np.ones(len(stream), dtype=bool)
    kept[refused] = False
    assert applied.rows.tolist() == np.flatnonzero(kept).tolist()
    clean = Stream(
        *(a[kept] for a in (stream.users, stream.times, stream.amounts, stream.merchants))
    )
    np.testing.assert_allclose(applied.features, pandas_oracle(clean, DEFAULT_FEATURES), rtol=RTOL)


def test_no_non_finite_feature_leaves_the_state() -> None:
    """Amounts past any sane bound (the decoder refuses them) overflow sums, mean, std and
    EWM; those rows are refused as out_of_range instead of being stored as inf."""
    t0 = 1_767_225_600_000
    users = np.array([1, 1, 2, 1, 2], dtype=np.int64)
    stream = Stream(
        users,
        t0 + np.arange(5, dtype=np.int64) * 1000,
        np.array([1e308, 1e308, 5.0, 3.0, 7.0]),
        np.ones(5, dtype=np.int64),
    )
    applied = apply_events(WindowState(DEFAULT_FEATURES, lateness_ms=LATENESS_MS), _batch(stream))
    assert np.isfinite(applied.features).all()
    refused = {row: (reason, detail) for row, reason, detail in applied.refused}
    assert sorted(refused) == [1, 3]  # user 1 from its second event on; user 2 untouched
    assert all(reason is Reason.OUT_OF_RANGE for reason, _ in refused.values())
    assert "would be inf" in refused[1][1]
    assert applied.rows.tolist() == [0, 2, 4]


def test_amounts_at_the_limit_keep_every_feature_finite() -> None:
    """At the largest bound one may configure, a burst of a hot user keeps every feature
    finite and exact: the bound is what makes the guard above never fire."""
    rng = np.random.default_rng(3)
    n = 20_000
    users = np.where(rng.random(n) < 0.6, 1, rng.integers(2, 50, n)).astype(np.int64)
    times = 1_767_225_600_000 + np.sort(rng.integers(0, 3_600_000, n)).astype(np.int64)
    amounts = np.where(rng.random(n) < 0.5, AMOUNT_LIMIT, rng.uniform(0, AMOUNT_LIMIT, n))
    stream = Stream(users, times, amounts, rng.integers(0, 30, n).astype(np.int64))
    applied = apply_events(WindowState(DEFAULT_FEATURES, lateness_ms=LATENESS_MS), _batch(stream))
    assert applied.refused == [] and np.isfinite(applied.features).all()
    np.testing.assert_allclose(
        applied.features, pandas_oracle(stream, DEFAULT_FEATURES), rtol=1e-9, atol=0
    )


class _Record:
    def __init__(self, offset: int, key: bytes, value: bytes):
        self.offset, self.key, self.value = offset, key, value


def test_processor_dead_letters_the_poison_record_with_its_bytes() -> None:
    state = PoisonState(DEFAULT_FEATURES, lateness_ms=LATENESS_MS)
    state.poison = frozenset({13})
    processor = PartitionProcessor(
        topic="events", partition=2, specs=DEFAULT_FEATURES, lateness_ms=LATENESS_MS, state=state
    )
    now = 1_767_225_600_000

    def record(offset: int, user: int) -> _Record:
        value = (
            f'{{"event_id":"e{offset}","user_id":{user},"merchant_id":1,'
            f'"amount":2.5,"event_time":{now - 1000 + offset}}}'
        ).encode()
        return _Record(offset, str(user).encode(), value)

    records = [record(o, u) for o, u in enumerate([1, 2, 13, 1, 2, 1], start=100)]
    effects = processor.process(records, now_ms=now)
    assert effects.accepted.offset.tolist() == [100, 101, 103, 104, 105]
    [letter] = effects.dead_letters
    assert (letter.reason, letter.offset, letter.value, letter.key) == (
        Reason.PROCESSING_ERROR,
        102,
        records[2].value,
        b"13",
    )
    assert "ValueError: cannot take user 13" in dict(letter.headers())["featflow.detail"].decode()
    assert processor.offset == 105
    assert effects.features[:, 0].tolist() == [1, 1, 2, 2, 3]  # txn_count_5m, 13 not counted
