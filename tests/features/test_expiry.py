"""Idle entities (``features.spec.Expiry``): the rules against their plain-Python restatement
(``testing.oracle.expiry_reference``) and the brute-force feature oracle, on a churning,
heavy-tailed, disordered stream; dropping idle entities changes no row, in stream (one state
per partition, restored at random points) and backfill alike; memory follows the active
entities, not all ever seen."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import features.state
from features.backfill import backfill
from features.event_files import from_records
from features.kernels import DEFAULT_TUNING, Tuning
from features.spec import Expiry, FeatureSpec, feature_names
from features.state import WindowState
from infra.partitioner import partition_clocks, partition_of
from testing.oracle import Stream, bruteforce_oracle_np, expiry_reference
from tests.features.test_kernels import assert_features_close, run_kernel

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
LATENESS_MS = MINUTE_MS
EXPIRY = Expiry(idle_ms=2 * HOUR_MS, max_delay_ms=30 * MINUTE_MS)
PARTITIONS = 3


def _spec(name: str, agg: str, column: str | None, window_ms: int | None, **kw) -> FeatureSpec:
    return FeatureSpec(name=name, agg=agg, column=column, window_ms=window_ms, description="x",
                       **kw)  # fmt: skip


SPECS = (
    _spec("count_1h", "count", None, HOUR_MS),
    _spec("sum_10m", "sum", "amount", 10 * MINUTE_MS),
    _spec("std_1h", "std", "amount", HOUR_MS),
    _spec("distinct_1h", "distinct", "merchant_id", HOUR_MS),
    _spec("same_1h", "count_same", "merchant_id", HOUR_MS),
    _spec("p90_1h", "quantile", "amount", HOUR_MS, percentile=90),
    _spec("since", "since_last", None, None),
    _spec("ewm", "ewm_mean", "amount", 20 * MINUTE_MS),
    _spec("last", "last", "amount", None),
)


def churn_stream(seed: int, n_users: int = 300, days: float = 3.0) -> Stream:
    """Users who come and go: each has a few active spells (Zipf(1.6) sizes, so a few users
    hold most rows and are promoted), separated by gaps either side of ``idle_ms`` (some
    within a millisecond of it); events arrive a little out of order (some past the
    lateness), and a few arrive far behind their partition (past ``max_delay_ms``)."""
    rng = np.random.default_rng(seed)
    span = int(days * 24 * HOUR_MS)
    weight = 1.0 / np.arange(1, n_users + 1) ** 1.6
    sizes = np.maximum(1, (weight / weight.sum() * 12_000).astype(int))
    users, times = [], []
    idle = EXPIRY.idle_ms
    assert idle is not None
    for u, size in enumerate(rng.permutation(sizes).tolist(), start=1):
        t = int(rng.integers(0, span // 2))
        for spell in np.array_split(np.arange(size), int(rng.integers(1, 5))):
            gaps = rng.exponential(3 * MINUTE_MS, len(spell)).astype(np.int64)
            spell_times = t + np.cumsum(gaps) - gaps[:1]  # the spell opens at t exactly
            users += [u] * len(spell)
            times += spell_times.tolist()
            t = int(spell_times[-1]) if len(spell) else t
            t += int(rng.choice([idle // 2, idle - 1, idle, idle + 1, 2 * idle, 5 * idle]))
    users_a, times_a = np.array(users, np.int64), np.array(times, np.int64) + 1_700_000_000_000
    delay = np.where(rng.random(len(users_a)) < 0.05, rng.integers(0, 3 * LATENESS_MS), 0)
    far = rng.random(len(users_a)) < 0.004
    delay[far] = rng.integers(EXPIRY.max_delay_ms, 3 * EXPIRY.max_delay_ms, far.sum())
    order = np.argsort(times_a + delay, kind="stable")
    n = len(order)
    return Stream(
        users_a[order], times_a[order], rng.lognormal(3, 1, n).round(2),
        rng.integers(1, 40, n).astype(np.int64),
    )  # fmt: skip


@functools.cache
def _case(seed: int) -> tuple[Stream, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(stream, partitions, expected features, expected late, behind the clock)."""
    stream = churn_stream(seed)
    partition = partition_of(stream.users, PARTITIONS)
    idle, delay = EXPIRY.idle_ms, EXPIRY.max_delay_ms
    assert idle is not None and delay is not None
    behind, sessions = expiry_reference(stream, partition, idle, delay)
    features, late = bruteforce_oracle_np(sessions, SPECS, LATENESS_MS)
    expected = np.full((len(stream), len(SPECS)), np.nan)
    expected_late = behind.copy()
    kept = np.flatnonzero(~behind)
    expected[kept] = features
    expected_late[kept] = late
    return stream, partition, expected, expected_late, behind


def _stream_like(stream: Stream, partition: np.ndarray, seed: int, tuning: Tuning) -> tuple:
    """One state per partition fed its events in random batch sizes, snapshotted and
    restored at random points; (features, late, states)."""
    rng = np.random.default_rng(seed)
    features = np.full((len(stream), len(SPECS)), np.nan)
    late = np.zeros(len(stream), dtype=bool)
    states = []
    for p in range(PARTITIONS):
        rows = np.flatnonzero(partition == p)
        state = WindowState(SPECS, lateness_ms=LATENESS_MS, expiry=EXPIRY, tuning=tuning)
        purged = 0
        start = 0
        while start < len(rows):
            take = rows[start : start + int(rng.integers(1, 400))]
            res = state.update(stream.users[take], stream.times[take], stream.amounts[take],
                               stream.merchants[take])  # fmt: skip
            assert not res.failed
            features[take], late[take] = res.features, res.late
            start += len(take)
            if rng.random() < 0.05:
                purged += state.purged
                state = WindowState.restore(state.snapshot(), SPECS, expiry=EXPIRY, tuning=tuning)
        state.purged += purged
        states.append(state)
    return features, late, states


@pytest.mark.parametrize("seed", [1, 2])
def test_stream_states_follow_the_rules_and_drop_idle_users(
    seed: int, tuning: Tuning, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(features.state, "_PURGE_MIN", 1)  # drop every idle user at once,
    monkeypatch.setattr(features.state, "_PURGE_SHARE", 1 << 40)  # however few
    stream, partition, expected, expected_late, behind = _case(seed)
    assert 0 < behind.sum() < len(stream) // 50  # the clock rule refused some, not many
    got, late, states = _stream_like(stream, partition, seed, tuning)
    np.testing.assert_array_equal(late, expected_late)
    assert_features_close(got, expected, feature_names(SPECS))
    # the reference did split users into sessions: the rule was exercised ...
    idle, delay = EXPIRY.idle_ms, EXPIRY.max_delay_ms
    assert idle is not None and delay is not None
    sessions = len(np.unique(expiry_reference(stream, partition, idle, delay)[1].users))
    assert sessions > len(np.unique(stream.users)) * 1.2
    # ... and the states dropped idle users (few are held at the end: the stream's last hours)
    assert sum(s.purged for s in states) > 0
    held = sum(s.n_entities for s in states)
    assert held < len(np.unique(stream.users)) // 2


def test_a_drop_in_place_changes_no_bit(tuning: Tuning, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle users dropped in place, survivors moved into their places (heavy ones, on the
    incremental path, among them) against the same partitions' states that drop nothing
    (fed their own clock): every row, duplicate verdict and snapshot-restored row is the same
    bit for bit, and the dropping states hold fewer users."""
    moved_promoted = 0
    drop = features.state.K.drop_entities

    def counting_drop(st, enc, gone, n, moved_from, moved_to):  # type: ignore[no-untyped-def]
        nonlocal moved_promoted
        moves = drop(st, enc, gone, n, moved_from, moved_to)
        moved_promoted += int((st.seg[moved_to[:moves], features.state.K.XSLOT] >= 0).sum())
        return moves

    monkeypatch.setattr(features.state.K, "drop_entities", counting_drop)
    monkeypatch.setattr(features.state, "_PURGE_MIN", 1)  # drop every idle user at once,
    monkeypatch.setattr(features.state, "_PURGE_SHARE", 1 << 40)  # however few
    stream, partition, *_ = _case(1)
    rng = np.random.default_rng(5)
    # event keys, 5% of them a producer's retry: the key of the user's previous event
    by_user = np.argsort(stream.users, kind="stable")
    previous = np.arange(len(stream))
    same = stream.users[by_user][1:] == stream.users[by_user][:-1]
    previous[by_user[1:][same]] = by_user[:-1][same]
    ids = np.where(rng.random(len(stream)) < 0.05, previous, np.arange(len(stream)))
    purged = 0
    for p in range(PARTITIONS):
        rows = np.flatnonzero(partition == p)
        clocks = partition_clocks(np.zeros(len(rows), np.int64), stream.times[rows])
        dropping = WindowState(SPECS, lateness_ms=LATENESS_MS, expiry=EXPIRY, tuning=tuning)
        keeping = WindowState(SPECS, lateness_ms=LATENESS_MS, expiry=EXPIRY, tuning=tuning)
        start = 0
        while start < len(rows):
            take = slice(start, start + int(rng.integers(1, 300)))
            at = rows[take]
            cols = (stream.users[at], stream.times[at], stream.amounts[at], stream.merchants[at],
                    ids[at])  # fmt: skip
            a = dropping.update(*cols)
            b = keeping.update(*cols, clocks=clocks[take])
            np.testing.assert_array_equal(a.features, b.features)
            np.testing.assert_array_equal(a.late, b.late)
            np.testing.assert_array_equal(a.duplicate, b.duplicate)
            start = take.stop
            if rng.random() < 0.03:
                dropping = WindowState.restore(dropping.snapshot(), SPECS, tuning=tuning)
                purged += 1 if dropping.n_entities < keeping.n_entities else 0
        assert dropping.n_entities < keeping.n_entities
    assert purged > 0  # drops happened ...
    # ... and moved users on the incremental path (the test streams are too small for the
    # default thresholds to promote anyone; the other modes promote every user or most)
    assert moved_promoted > 0 or tuning == DEFAULT_TUNING


def test_one_state_with_partition_clocks_equals_the_rules(tuning: Tuning) -> None:
    """A state that is not one partition's (a backfill) takes each event's partition clock:
    the same rows as the per-partition states, and it drops nothing."""
    stream, partition, expected, expected_late, _ = _case(1)
    clocks = partition_clocks(partition, stream.times)
    state = WindowState(SPECS, lateness_ms=LATENESS_MS, expiry=EXPIRY, tuning=tuning)
    res = state.update(stream.users, stream.times, stream.amounts, stream.merchants, clocks=clocks)
    np.testing.assert_array_equal(res.late, expected_late)
    assert_features_close(res.features, expected, feature_names(SPECS))
    assert state.purged == 0


def test_without_expiry_an_idle_user_is_remembered() -> None:
    """The rule changes rows only where it says (so the test above can fail): without it,
    a user back after more than ``idle_ms`` gets ``since_last`` across the gap."""
    idle = EXPIRY.idle_ms
    assert idle is not None
    stream = Stream(np.array([7, 7]), np.array([0, idle + 5]), np.array([1.0, 2.0]),
                    np.array([1, 1]))  # fmt: skip
    plain, _ = run_kernel(stream, SPECS, LATENESS_MS)
    state = WindowState(SPECS, lateness_ms=LATENESS_MS, expiry=EXPIRY)
    fresh = state.update(stream.users, stream.times, stream.amounts, stream.merchants).features
    since = list(feature_names(SPECS)).index("since")
    assert plain[1, since] == (idle + 5) / 1000 and fresh[1, since] == -1.0


def test_an_id_seen_before_the_idle_gap_is_no_duplicate() -> None:
    """A user's event id reused after the user went idle: the user starts afresh, so it is
    not a copy of anything (within the gap it is)."""
    idle = EXPIRY.idle_ms
    assert idle is not None
    state = WindowState(SPECS, lateness_ms=LATENESS_MS, expiry=EXPIRY)
    users, amounts, merchants = np.array([5]), np.array([1.0]), np.array([1])
    key = np.array([42])
    state.update(users, np.array([0]), amounts, merchants, event_keys=key)
    again = state.update(users, np.array([0]), amounts, merchants, event_keys=key)
    assert again.duplicate is not None and again.duplicate[0]
    later = state.update(users, np.array([idle + 1]), amounts, merchants, event_keys=key)
    assert later.duplicate is not None and not later.duplicate[0]
    assert later.features[0, list(feature_names(SPECS)).index("count_1h")] == 1


def test_expiry_must_outlast_the_windows_and_survives_a_restore() -> None:
    with pytest.raises(ValueError, match="longest window"):
        WindowState(SPECS, lateness_ms=LATENESS_MS, expiry=Expiry(idle_ms=HOUR_MS))
    state = WindowState(SPECS, lateness_ms=LATENESS_MS, expiry=EXPIRY)
    state.update(np.array([1]), np.array([10 * HOUR_MS]), np.array([1.0]), np.array([1]))
    restored = WindowState.restore(state.snapshot(), SPECS)
    assert restored.expiry == EXPIRY and restored.clock == 10 * HOUR_MS
    with pytest.raises(ValueError, match="expiry"):
        WindowState.restore(state.snapshot(), SPECS, expiry=Expiry(idle_ms=3 * HOUR_MS))


def test_backfill_equals_the_partition_states() -> None:
    """``backfill`` with the partition count reproduces each partition's clock: the same
    rows and the same refusals as the stream's states, on several threads too."""
    stream, _, expected, expected_late, _ = _case(2)
    records = [
        (f'{{"event_id": "e{i}", "user_id": {u}, "event_time": {t}, "amount": {a}, '
         f'"merchant_id": {m}}}').encode()
        for i, (u, t, a, m) in enumerate(zip(stream.users.tolist(), stream.times.tolist(),
                                             stream.amounts.tolist(), stream.merchants.tolist(),
                                             strict=True))
    ]  # fmt: skip
    for threads in (1, 3):
        result = backfill(from_records(records), lateness_ms=LATENESS_MS, specs=SPECS,
                          threads=threads, expiry=EXPIRY, partitions=PARTITIONS)  # fmt: skip
        table = result.table.to_pandas()
        rows = table["kafka_offset"].to_numpy()
        np.testing.assert_array_equal(np.sort(rows), np.flatnonzero(~expected_late))
        got = table[list(feature_names(SPECS))].to_numpy(float)
        assert_features_close(got, expected[rows], feature_names(SPECS))
        assert len(result.rejected) == expected_late.sum()
