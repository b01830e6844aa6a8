"""Request-time features: ``WindowState.peek`` gives each event the row ``update`` would give
it as the next event, bit for bit, and changes nothing."""

from __future__ import annotations

import numpy as np

from features.kernels import Tuning
from features.spec import DEFAULT_FEATURES, MINUTE_MS
from features.state import WindowState
from testing.oracle import Stream


def _stream(seed: int, n: int) -> Stream:
    """Zipf(1.6) users (one holds ~40 %: promoted), bursts, silences longer than the 24 h
    windows (rows expire between a user's events), disorder within and past the lateness."""
    rng = np.random.default_rng(seed)
    users = np.minimum(rng.zipf(1.6, n), 300).astype(np.int64)
    gaps = rng.choice([0, 500, 20_000, 3_600_000, 30 * 3_600_000], size=n,
                      p=[0.2, 0.4, 0.3, 0.08, 0.02])  # fmt: skip
    times = 1_767_225_600_000 + np.cumsum(gaps) - rng.integers(0, 90_000, n)
    amounts = np.round(np.exp(rng.normal(3, 1, n)), 2)
    return Stream(users, times, amounts, rng.integers(1, 30, n).astype(np.int64))


def test_peek_equals_the_next_update_and_changes_nothing(tuning: Tuning) -> None:
    stream = _stream(0, 3000)
    live = WindowState(DEFAULT_FEATURES, lateness_ms=MINUTE_MS, tuning=tuning)
    twin = WindowState(DEFAULT_FEATURES, lateness_ms=MINUTE_MS, tuning=tuning)
    peeked_late = promoted = 0
    for i in range(len(stream)):
        one = stream.slice(i, i + 1)
        args = (one.users, one.times, one.amounts, one.merchants)
        features, late = live.peek(*args)
        got = live.update(*args)
        np.testing.assert_array_equal(late, got.late)
        np.testing.assert_array_equal(features, got.features)  # NaN rows for late ones
        peeked_late += int(late[0])
        promoted = max(promoted, live.n_promoted)
        twin.update(*args)  # never peeked at
    assert 0 < peeked_late < len(stream) // 5
    assert promoted > 0  # the busy user's rows took the incremental path
    # peeking changed nothing: both states answer every later event alike
    more = _stream(1, 400)
    args = (more.users, more.times + 40 * 3_600_000 * 24, more.amounts, more.merchants)
    np.testing.assert_array_equal(live.update(*args).features, twin.update(*args).features)


def test_each_peeked_event_sees_the_state_alone() -> None:
    stream = _stream(2, 500)
    state = WindowState(DEFAULT_FEATURES)
    state.update(stream.users, stream.times, stream.amounts, stream.merchants)
    t = int(stream.times.max()) + 1_000
    users = np.array([1, 1, 2, 999_999, 1], dtype=np.int64)  # repeats and a new user
    times = np.array([t, t + 5, t, t, t], dtype=np.int64)
    amounts = np.array([10.0, 20.0, 30.0, 40.0, 10.0])
    merchants = np.array([3, 4, 5, 6, 3], dtype=np.int64)
    features, late = state.peek(users, times, amounts, merchants)
    assert not late.any()
    for k in range(5):  # each alone against a copy of the state
        alone = WindowState.restore(state.snapshot())
        row = alone.update(users[k : k + 1], times[k : k + 1], amounts[k : k + 1],
                           merchants[k : k + 1]).features  # fmt: skip
        np.testing.assert_array_equal(features[k], row[0])
    np.testing.assert_array_equal(features[0], features[4])  # same event, same answer
