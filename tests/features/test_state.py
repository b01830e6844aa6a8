"""WindowState: snapshot/restore, arena growth/compaction, online-row mask, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import state as state_mod
from features.kernels import Tuning
from features.spec import DEFAULT_FEATURES, MINUTE_MS, FeatureSpec
from features.state import BatchResult, WindowState
from testing.oracle import (
    Stream,
    bruteforce_oracle,
    bruteforce_oracle_np,
    make_hot_stream,
    make_shuffled_hot_stream,
    make_stream,
)
from tests.features.conftest import TUNINGS
from tests.features.test_kernels import SHORT_LATENESS, SHORT_SPECS

LATENESS = 5 * MINUTE_MS


def feed(state: WindowState, stream: Stream, batch: int) -> list[BatchResult]:
    out = []
    for lo in range(0, len(stream), batch):
        p = stream.slice(lo, lo + batch)
        out.append(state.update(p.users, p.times, p.amounts, p.merchants))
    return out


def cat(results: list[BatchResult], field: str) -> np.ndarray:
    return np.concatenate([getattr(r, field) for r in results])


def test_snapshot_restore_mid_stream_is_exact(tuning: Tuning) -> None:
    stream = make_stream(21, n_users=30, n_events=2000, disorder=0.25)
    ref = cat(feed(WindowState(lateness_ms=LATENESS, tuning=tuning), stream, 250), "features")

    first = WindowState(lateness_ms=LATENESS, tuning=tuning)
    part1 = feed(first, stream.slice(0, 1100), 250)
    blob = first.snapshot()
    restored = WindowState.restore(blob, DEFAULT_FEATURES, tuning=tuning)
    assert restored.n_entities == first.n_entities
    assert restored.lateness_ms == LATENESS
    assert restored.feature_names == first.feature_names
    assert len(blob) < first.nbytes  # only live rows are written
    part2 = feed(restored, stream.slice(1100, len(stream)), 250)
    got = np.concatenate([cat(part1, "features"), cat(part2, "features")])
    np.testing.assert_array_equal(got, ref)  # bit-identical, NaN rows included


def test_snapshot_of_empty_state_roundtrips() -> None:
    st0 = WindowState.restore(WindowState().snapshot())
    assert st0.n_entities == 0
    r = st0.update(np.array([1]), np.array([5]), np.array([2.0]), np.array([3]))
    assert r.features[0, 0] == 1.0


def test_restore_with_different_specs_raises() -> None:
    blob = WindowState(lateness_ms=LATENESS).snapshot()
    extra = FeatureSpec(
        name="amount_min_5m", agg="min", column="amount", window_ms=300_000, description="min"
    )
    with pytest.raises(ValueError, match="different feature specs"):
        WindowState.restore(blob, (*DEFAULT_FEATURES, extra))
    with pytest.raises(ValueError, match="different feature specs"):
        WindowState.restore(blob, (DEFAULT_FEATURES[1], DEFAULT_FEATURES[0], *DEFAULT_FEATURES[2:]))
    with pytest.raises(ValueError, match="lateness_ms"):
        WindowState.restore(blob, DEFAULT_FEATURES, lateness_ms=1)
    assert WindowState.restore(blob, lateness_ms=LATENESS).lateness_ms == LATENESS
    with pytest.raises(ValueError, match="not a WindowState snapshot"):
        WindowState.restore(b"garbage", DEFAULT_FEATURES)


def test_restore_rejects_other_format_version(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = WindowState().snapshot()
    version = state_mod.SNAPSHOT_VERSION
    monkeypatch.setattr(state_mod, "_READABLE_VERSIONS", (99,))
    with pytest.raises(ValueError, match=rf"format version {version} is not one .* \(99,\)"):
        WindowState.restore(blob)


def test_tiny_capacities_grow_and_compact_exactly(tuning: Tuning) -> None:
    stream = make_stream(22, n_users=40, n_events=3000, disorder=0.2)
    ref = WindowState(lateness_ms=LATENESS, tuning=tuning).update(
        stream.users, stream.times, stream.amounts, stream.merchants
    )
    tiny = WindowState(
        lateness_ms=LATENESS, initial_entities=1, initial_arena=1, min_segment=1, tuning=tuning
    )
    res = []
    for k, lo in enumerate(range(0, len(stream), 97)):
        p = stream.slice(lo, lo + 97)
        res.append(tiny.update(p.users, p.times, p.amounts, p.merchants))
        if k % 5 == 0:
            tiny.compact()  # explicit compaction between batches must be invisible too
    assert tiny.n_entities == 40
    assert tiny.nbytes > WindowState(initial_entities=1, initial_arena=1).nbytes
    np.testing.assert_array_equal(cat(res, "features"), ref.features)
    np.testing.assert_array_equal(cat(res, "late"), ref.late)


@pytest.mark.parametrize("name", ["default", "flapping"])
def test_hot_users_exact_across_batches_compaction_and_restore(name: str) -> None:
    """Promoted entities' incremental state (running sums, stacks, distinct map) survives
    any batching, arena compaction/relocation and snapshot/restore bit for bit."""
    stream = make_hot_stream(
        3, hot_users=2, hot_events=3_000, span_ms=2 * 3_600_000, small_users=30,
        small_events=1_500, disorder=0.1, max_delay_ms=8 * MINUTE_MS,
    )  # fmt: skip
    tuning = TUNINGS[name]
    whole = WindowState(lateness_ms=LATENESS, tuning=tuning)
    ref = whole.update(stream.users, stream.times, stream.amounts, stream.merchants)
    assert whole.n_promoted >= 2
    state = WindowState(lateness_ms=LATENESS, initial_entities=1, initial_arena=8, tuning=tuning)
    feats, lates = [], []
    for k, lo in enumerate(range(0, len(stream), 313)):
        p = stream.slice(lo, lo + 313)
        r = state.update(p.users, p.times, p.amounts, p.merchants)
        feats.append(r.features)
        lates.append(r.late)
        if k % 3 == 1:
            state.compact()
        if k % 4 == 2:
            state = WindowState.restore(state.snapshot(), tuning=tuning)
    assert ref.late.any()
    np.testing.assert_array_equal(np.concatenate(lates), ref.late)
    np.testing.assert_array_equal(np.concatenate(feats), ref.features)
    assert state.n_promoted == whole.n_promoted
    assert whole.nbytes > WindowState(initial_entities=1, initial_arena=1).nbytes


def test_promoted_late_rows_exact_across_restore(tuning: Tuning) -> None:
    """Out-of-order rows of promoted entities read distinct flags, previous-occurrence links
    and run lengths, which a restore rebuilds from the rows (links to evicted rows dropped,
    where a live state keeps them unused): bit-identical across batching, compaction and
    restore, also while rows are evicted."""
    stream = make_shuffled_hot_stream(2)
    whole = WindowState(SHORT_SPECS, lateness_ms=SHORT_LATENESS, tuning=tuning)
    ref = whole.update(stream.users, stream.times, stream.amounts, stream.merchants)
    assert whole.n_promoted >= 2
    state = WindowState(SHORT_SPECS, lateness_ms=SHORT_LATENESS, initial_entities=1, tuning=tuning)
    feats, lates = [], []
    for k, lo in enumerate(range(0, len(stream), 257)):
        p = stream.slice(lo, lo + 257)
        r = state.update(p.users, p.times, p.amounts, p.merchants)
        feats.append(r.features)
        lates.append(r.late)
        if k % 3 == 1:
            state.compact()
        if k % 2 == 0:
            state = WindowState.restore(state.snapshot(), SHORT_SPECS, tuning=tuning)
    assert ref.late.any()
    np.testing.assert_array_equal(np.concatenate(lates), ref.late)
    np.testing.assert_array_equal(np.concatenate(feats), ref.features)


def test_latest_mask_never_regresses_online_row() -> None:
    stream = make_stream(23, n_users=15, n_events=1500, disorder=0.4)
    state = WindowState(lateness_ms=LATENESS)
    online: dict[int, tuple[int, int]] = {}  # user -> (event time, global row)
    offset = 0
    for r in feed(state, stream, 64):
        rows = np.flatnonzero(r.latest_mask)
        users = stream.users[offset + rows]
        assert len(set(users.tolist())) == len(rows)  # at most one row per user per batch
        assert not r.late[rows].any()
        for row, u in zip(rows.tolist(), users.tolist(), strict=True):
            t = int(stream.times[offset + row])
            assert t == r.entity_max_time_ms[row]
            assert u not in online or online[u][0] <= t  # never older than what is stored
            online[u] = (t, offset + row)
        offset += len(r.late)
    # the stored row per user is the last-arrived accepted row holding the user's max time
    whole = WindowState(lateness_ms=LATENESS).update(
        stream.users, stream.times, stream.amounts, stream.merchants
    )
    for u, (t, row) in online.items():
        acc = np.flatnonzero((stream.users == u) & ~whole.late)
        tmax = stream.times[acc].max()
        assert t == tmax
        assert row == acc[stream.times[acc] == tmax].max()


def test_update_validates_inputs() -> None:
    s = WindowState()
    one_i, one_f = np.array([1]), np.array([1.0])
    with pytest.raises(ValueError, match="equal lengths"):
        s.update(np.array([1, 2]), one_i, one_f, one_i)
    with pytest.raises(TypeError, match="user_ids must be int64"):
        s.update(one_f, one_i, one_f, one_i)
    with pytest.raises(TypeError, match="times_ms must be int64"):
        s.update(one_i, np.array([1], dtype=np.uint64), one_f, one_i)
    with pytest.raises(ValueError, match="out of range"):
        s.update(one_i, np.array([np.iinfo(np.int64).min]), one_f, one_i)
    with pytest.raises(ValueError, match="finite"):
        s.update(one_i, one_i, np.array([np.nan]), one_i)
    with pytest.raises(ValueError, match="1-D"):
        s.update(one_i.reshape(1, 1), one_i, one_f, one_i)
    with pytest.raises(ValueError, match="lateness_ms"):
        WindowState(lateness_ms=-1)
    r = s.update(np.array([], dtype=np.int64), [], [], [])
    assert r.features.shape == (0, len(DEFAULT_FEATURES))
    assert s.n_entities == 0


# ------------------------------------------------------------------------ property test

SMALL_SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec(name="c10", agg="count", column=None, window_ms=10, description="c"),
    FeatureSpec(name="s25", agg="sum", column="amount", window_ms=25, description="s"),
    FeatureSpec(name="m25", agg="mean", column="amount", window_ms=25, description="m"),
    FeatureSpec(name="d25", agg="std", column="amount", window_ms=25, description="d"),
    FeatureSpec(name="x10", agg="max", column="amount", window_ms=10, description="x"),
    FeatureSpec(name="n40", agg="min", column="amount", window_ms=40, description="n"),
    FeatureSpec(name="u25", agg="distinct", column="merchant_id", window_ms=25, description="u"),
    FeatureSpec(name="gap", agg="since_last", column=None, window_ms=None, description="g"),
    FeatureSpec(name="e20", agg="ewm_mean", column="amount", window_ms=20, description="e"),
)

events = st.lists(
    st.tuples(
        st.integers(0, 3),  # user
        st.integers(0, 150),  # time ms
        st.integers(0, 500).map(lambda c: c / 4),  # amount (exact in binary, many ties)
        st.integers(0, 3),  # merchant
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(evs=events, lateness=st.integers(0, 30), batch=st.integers(1, 9))
def test_property_matches_bruteforce(
    evs: list[tuple[int, int, float, int]], lateness: int, batch: int
) -> None:
    cols = list(zip(*evs, strict=True))
    stream = Stream(
        users=np.array(cols[0], dtype=np.int64),
        times=np.array(cols[1], dtype=np.int64),
        amounts=np.array(cols[2], dtype=np.float64),
        merchants=np.array(cols[3], dtype=np.int64),
    )
    exp, exp_late = bruteforce_oracle(stream, SMALL_SPECS, lateness)
    for name, tuning in TUNINGS.items():
        state = WindowState(
            SMALL_SPECS,
            lateness_ms=lateness,
            initial_entities=1,
            initial_arena=2,
            min_segment=1,
            tuning=tuning,
        )
        res = feed(state, stream, batch)
        np.testing.assert_array_equal(cat(res, "late"), exp_late, err_msg=name)
        np.testing.assert_allclose(
            cat(res, "features"), exp, rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=name
        )


def _burst_then_quiet(seed: int) -> Stream:
    """One user's burst (8,000 rows in an hour, ties and a few late rows) then two quiet
    days (one row every ~7 min), beside a few small users."""
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000_000
    burst = t0 + np.sort(rng.integers(0, 3_600_000, 8_000))
    quiet = burst[-1] + np.cumsum(rng.integers(1, 14 * MINUTE_MS, 400))
    times = np.concatenate([burst, quiet])
    late = rng.random(len(times)) < 0.02
    times[late] -= rng.integers(0, LATENESS, int(late.sum()))
    users = np.full(len(times), 7, dtype=np.int64)
    small = rng.random(len(times)) < 0.1
    users[small] = rng.integers(100, 110, int(small.sum()))
    amounts = np.round(rng.lognormal(3.0, 1.0, len(times)), 2)
    merchants = rng.integers(0, 50, len(times)).astype(np.int64)
    return Stream(users, times, amounts, merchants)


def test_rings_and_arena_shrink_after_a_burst() -> None:
    """A promoted entity's side storage (its ring) and the arena shrink at compaction once
    the burst's rows have left every window, and no row changes.

    Rings only grew before: a soak's merchant that a hot user paid for a day kept its
    burst's ring (5.7 x its live rows), merchant after merchant, and the worker's RSS grew
    (benchmarks/RESULTS.md "A 10-minute soak")."""
    stream = _burst_then_quiet(5)
    exp, exp_late = bruteforce_oracle_np(stream, DEFAULT_FEATURES, LATENESS)
    state = WindowState(lateness_ms=LATENESS, initial_entities=16, initial_arena=1024)
    burst_end = 8_000  # the burst (its rows, a tenth of them small users')
    results = feed(state, stream.slice(0, burst_end), 500)
    state.compact()
    after_burst = state.nbytes
    results += feed(state, stream.slice(burst_end, len(stream)), 50)
    state.compact()
    assert state.n_live_rows < 500
    # the burst's ~8,000 rows (arena and ring) are given back: the state keeps its live
    # rows and its slack, not its past
    assert state.nbytes < after_burst / 4, (state.nbytes, after_burst)
    np.testing.assert_array_equal(cat(results, "late"), exp_late)
    np.testing.assert_allclose(cat(results, "features"), exp, rtol=1e-9, atol=1e-9,
                               equal_nan=True)  # fmt: skip
    # and it goes on exactly through the shrunk ring and arena: bit for bit as one state
    # that never compacted (its arena fits all), a second burst and quiet included
    more = _burst_then_quiet(6)
    more = Stream(more.users, more.times + (stream.times.max() - more.times.min()) + 1,
                  more.amounts, more.merchants)  # fmt: skip
    whole = Stream(*(np.concatenate([getattr(stream, f), getattr(more, f)]) for f in
                     ("users", "times", "amounts", "merchants")))  # fmt: skip
    ref = WindowState(lateness_ms=LATENESS, initial_arena=1 << 20)
    expected = ref.update(whole.users, whole.times, whole.amounts, whole.merchants).features
    tail = cat(feed(state, more, 700), "features")
    np.testing.assert_array_equal(tail, expected[len(stream) :])
