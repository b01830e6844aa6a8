"""Kernel semantics vs independent oracles (pandas for in-order, brute force for disorder)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pytest

from features.kernels import DEFAULT_TUNING, Tuning
from features.spec import (
    AGGS,
    DAY_MS,
    DEFAULT_FEATURES,
    DERIVED_AGGS,
    HOUR_MS,
    MINUTE_MS,
    FeatureSpec,
    feature_names,
    kernel_specs,
    max_window_ms,
    validate_specs,
)
from features.state import WindowState
from testing.oracle import (
    REFERENCES,
    Stream,
    bruteforce_oracle,
    bruteforce_oracle_np,
    bucketed,
    distinct_rolling_counter,
    make_hot_stream,
    make_shuffled_hot_stream,
    make_stream,
    pandas_oracle,
)
from tests.features.conftest import TUNINGS

RTOL = 1e-9
ATOL = 1e-9  # only matters for values ~0 (std of equal amounts, since_last 0)

EXTRA_SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        name="amount_min_5m", agg="min", column="amount", window_ms=5 * MINUTE_MS, description="m"
    ),
    FeatureSpec(name="txn_count_2s", agg="count", column=None, window_ms=2_000, description="c"),
    FeatureSpec(name="amount_sum_2s", agg="sum", column="amount", window_ms=2_000, description="s"),
    FeatureSpec(name="amount_std_2s", agg="std", column="amount", window_ms=2_000, description="d"),
    FeatureSpec(
        name="merchant_distinct_2s",
        agg="distinct",
        column="merchant_id",
        window_ms=2_000,
        description="d",
    ),
    FeatureSpec(
        name="amount_ewm_mean_2s", agg="ewm_mean", column="amount", window_ms=2_000, description="e"
    ),
    FeatureSpec(name="amount_now", agg="last", column="amount", window_ms=None, description="a"),
    FeatureSpec(
        name="merchant_now", agg="last", column="merchant_id", window_ms=None, description="m"
    ),
    FeatureSpec(
        name="amount_first_5m", agg="first", column="amount", window_ms=5 * MINUTE_MS,
        description="f",
    ),
    FeatureSpec(
        name="amount_median_5m", agg="quantile", column="amount", window_ms=5 * MINUTE_MS,
        percentile=50, description="q",
    ),
    FeatureSpec(
        name="amount_p90_2s", agg="quantile", column="amount", window_ms=2_000, percentile=90,
        description="q",
    ),
    FeatureSpec(
        name="same_merchant_5m", agg="count_same", column="merchant_id",
        window_ms=5 * MINUTE_MS, description="s",
    ),
    FeatureSpec(
        name="amount_to_median_5m", agg="ratio", column=None, window_ms=None,
        inputs=("amount_now", "amount_median_5m"), description="r",
    ),
    FeatureSpec(
        name="amount_minus_first_5m", agg="difference", column=None, window_ms=None,
        inputs=("amount_now", "amount_first_5m"), description="d",
    ),
    FeatureSpec(
        name="new_merchant_5m", agg="equals", column=None, window_ms=None,
        inputs=("same_merchant_5m",), threshold=1.0, description="e",
    ),
    FeatureSpec(
        name="burst_2s", agg="below", column=None, window_ms=None, inputs=("txn_count_2s",),
        threshold=3.0, description="b",
    ),
)  # fmt: skip


def run_kernel(
    stream: Stream,
    specs: Sequence[FeatureSpec],
    lateness_ms: int = 0,
    tuning: Tuning = DEFAULT_TUNING,
) -> tuple[np.ndarray, np.ndarray]:
    """One ``WindowState.update`` over the whole stream, its arena big enough to never run
    out (batching, growth and compaction are the state tests' business)."""
    n = len(stream)
    state = WindowState(
        specs,
        lateness_ms=lateness_ms,
        initial_entities=max(len(np.unique(stream.users)), 1),
        initial_arena=8 * n + 1024,
        tuning=tuning,
    )
    res = state.update(stream.users, stream.times, stream.amounts, stream.merchants)
    assert not res.failed
    return res.features, res.late


def assert_features_close(actual: np.ndarray, expected: np.ndarray, names: Sequence[str]) -> None:
    for f, name in enumerate(names):
        np.testing.assert_allclose(
            actual[:, f], expected[:, f], rtol=RTOL, atol=ATOL, err_msg=name, equal_nan=True
        )


def single(t: Sequence[int], a: Sequence[float] | None = None, m: Sequence[int] | None = None,
           u: Sequence[int] | None = None) -> Stream:  # fmt: skip
    n = len(t)
    return Stream(
        users=np.asarray(u if u is not None else [7] * n, dtype=np.int64),
        times=np.asarray(t, dtype=np.int64),
        amounts=np.asarray(a if a is not None else [1.0] * n, dtype=np.float64),
        merchants=np.asarray(m if m is not None else [1] * n, dtype=np.int64),
    )


# ------------------------------------------------------------------------ vs pandas


@functools.cache
def _in_order_case(seed: int, extra: bool) -> tuple[Stream, tuple[FeatureSpec, ...], np.ndarray]:
    specs = DEFAULT_FEATURES + (EXTRA_SPECS if extra else ())
    stream = make_stream(seed, n_users=25, n_events=1200)
    return stream, specs, pandas_oracle(stream, specs)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("extra", [False, True], ids=["default", "extra_specs"])
def test_in_order_matches_pandas(seed: int, extra: bool, tuning: Tuning) -> None:
    stream, specs, expected = _in_order_case(seed, extra)
    got, late = run_kernel(stream, specs, lateness_ms=0, tuning=tuning)
    assert not late.any()
    assert_features_close(got, expected, feature_names(specs))


def test_stream_has_ties_bursts_and_long_gaps() -> None:
    """Guard the generator: the pandas comparison is only meaningful if it hits edge cases."""
    s = make_stream(0, n_users=25, n_events=1200)
    gaps = np.concatenate([np.diff(np.sort(s.times[s.users == u])) for u in np.unique(s.users)])
    assert (gaps == 0).sum() > 50
    assert (gaps > DAY_MS).sum() > 20
    assert (gaps == HOUR_MS).sum() > 5
    assert (gaps < 1_000).sum() > 50


# ------------------------------------------------------------------------ out of order


@functools.cache
def _out_of_order_case(seed: int, lateness_ms: int) -> tuple[Stream, np.ndarray, np.ndarray]:
    stream = make_stream(seed, n_users=12, n_events=700, disorder=0.3, max_delay_ms=15 * MINUTE_MS)
    return stream, *bruteforce_oracle(stream, DEFAULT_FEATURES + EXTRA_SPECS, lateness_ms)


@pytest.mark.parametrize("seed", [10, 11, 12])
@pytest.mark.parametrize("lateness_ms", [0, 5 * MINUTE_MS])
def test_out_of_order_vs_bruteforce(seed: int, lateness_ms: int, tuning: Tuning) -> None:
    specs = DEFAULT_FEATURES + EXTRA_SPECS
    stream, exp, exp_late = _out_of_order_case(seed, lateness_ms)
    got, late = run_kernel(stream, specs, lateness_ms=lateness_ms, tuning=tuning)
    np.testing.assert_array_equal(late, exp_late)
    assert 0 < late.sum() < len(stream) // 2
    assert np.isnan(got[late]).all()
    assert_features_close(got, exp, feature_names(specs))


def test_lateness_is_per_entity() -> None:
    # user 1 advances to t=10_000; user 2's old events are not late, user 1's are
    s = single(t=[10_000, 100, 9_000, 8_999, 9_500], u=[1, 2, 1, 1, 2])
    _, late = run_kernel(s, DEFAULT_FEATURES, lateness_ms=1_000)
    assert late.tolist() == [False, False, False, True, False]


def test_out_of_order_excludes_future_rows(tuning: Tuning) -> None:
    s = single(t=[5_000, 1_000, 3_000], a=[100.0, 1.0, 2.0], m=[1, 2, 3])
    got, late = run_kernel(s, DEFAULT_FEATURES, lateness_ms=10_000, tuning=tuning)
    assert not late.any()
    col = {n: i for i, n in enumerate(feature_names(DEFAULT_FEATURES))}
    assert got[2, col["txn_count_5m"]] == 2  # 1_000 and 3_000, not 5_000
    assert got[2, col["amount_sum_1h"]] == 3.0
    assert got[2, col["seconds_since_last_txn"]] == 2.0
    assert got[1, col["seconds_since_last_txn"]] == -1.0  # nothing earlier in time
    assert got[2, col["merchant_distinct_24h"]] == 2


# ------------------------------------------------------------------------ batching


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_batch_size_does_not_change_results(batch: int, tuning: Tuning) -> None:
    stream = make_stream(5, n_users=20, n_events=1500, disorder=0.2)
    whole = WindowState(lateness_ms=5 * MINUTE_MS, tuning=tuning).update(
        stream.users, stream.times, stream.amounts, stream.merchants
    )
    st = WindowState(lateness_ms=5 * MINUTE_MS, initial_entities=2, initial_arena=16, tuning=tuning)
    feats, lates = [], []
    for lo in range(0, len(stream), batch):
        part = stream.slice(lo, lo + batch)
        r = st.update(part.users, part.times, part.amounts, part.merchants)
        feats.append(r.features)
        lates.append(r.late)
    np.testing.assert_array_equal(np.concatenate(feats), whole.features)
    np.testing.assert_array_equal(np.concatenate(lates), whole.late)


# ------------------------------------------------------------------------ edge cases


def test_single_event(tuning: Tuning) -> None:
    got, _ = run_kernel(single(t=[123], a=[42.5], m=[9]), DEFAULT_FEATURES, tuning=tuning)
    expected = {
        "txn_count_5m": 1.0,
        "txn_count_1h": 1.0,
        "txn_count_24h": 1.0,
        "amount_sum_1h": 42.5,
        "amount_sum_24h": 42.5,
        "amount_mean_24h": 42.5,
        "amount_std_24h": 0.0,
        "amount_max_1h": 42.5,
        "merchant_distinct_24h": 1.0,
        "seconds_since_last_txn": -1.0,
        "amount_ewm_mean_1h": 42.5,
        "amount": 42.5,
        "merchant_id": 9.0,
        "amount_median_24h": bucketed(42.5),
        "amount_p95_24h": bucketed(42.5),
        "merchant_txn_count_24h": 1.0,
        "amount_to_median_24h": 42.5 / bucketed(42.5),
        "amount_to_mean_24h": 1.0,
        "first_time_at_merchant_24h": 1.0,
    }
    got_row = dict(zip(feature_names(DEFAULT_FEATURES), got[0].tolist(), strict=True))
    assert got_row == pytest.approx(expected, rel=1e-12, abs=0)


def test_all_events_same_time(tuning: Tuning) -> None:
    a = [3.0, 5.0, 5.0, 11.0]
    s = single(t=[1000] * 4, a=a, m=[1, 2, 1, 3])
    got, _ = run_kernel(s, DEFAULT_FEATURES, tuning=tuning)
    col = {n: i for i, n in enumerate(feature_names(DEFAULT_FEATURES))}
    assert got[:, col["txn_count_5m"]].tolist() == [1, 2, 3, 4]
    assert got[:, col["seconds_since_last_txn"]].tolist() == [-1.0, 0.0, 0.0, 0.0]
    assert got[:, col["merchant_distinct_24h"]].tolist() == [1, 2, 2, 3]
    for i in range(4):
        assert got[i, col["amount_std_24h"]] == pytest.approx(np.std(a[: i + 1]), rel=1e-12)
        # zero time deltas: ewm is the plain running mean
        assert got[i, col["amount_ewm_mean_1h"]] == pytest.approx(np.mean(a[: i + 1]), rel=1e-12)
    assert_features_close(got, pandas_oracle(s, DEFAULT_FEATURES), feature_names(DEFAULT_FEATURES))


@pytest.mark.parametrize("w", [5 * MINUTE_MS, HOUR_MS, DAY_MS])
def test_window_boundary(w: int, tuning: Tuning) -> None:
    """Window is (t - w, t]: an event at exactly t - w is out, at t - w + 1 is in."""
    specs = [s for s in DEFAULT_FEATURES if s.agg == "count" and s.window_ms == w]
    got, _ = run_kernel(single(t=[0, w, 10 * w, 11 * w - 1]), specs, tuning=tuning)
    assert got[:, 0].tolist() == [1, 1, 1, 2]


def test_state_retention_keeps_since_last_exact_after_eviction(tuning: Tuning) -> None:
    # second event is 3 days later: history evicted, since_last must still see the first
    s = single(t=[0, 3 * DAY_MS, 3 * DAY_MS + 1_000])
    got, _ = run_kernel(s, DEFAULT_FEATURES, tuning=tuning)
    col = feature_names(DEFAULT_FEATURES).index("seconds_since_last_txn")
    assert got[:, col].tolist() == [-1.0, 3 * DAY_MS / 1000.0, 1.0]


def test_late_row_breaks_constant_run(tuning: Tuning) -> None:
    """A late row inside a constant run ends the run right after itself: the window that
    starts exactly at the late row is not constant (std != 0)."""
    specs = [s for s in EXTRA_SPECS if s.name in ("amount_std_2s", "txn_count_2s")]
    s = single(t=[1000, 2000, 3000, 1500, 3400, 3600], a=[10.0, 10.0, 10.0, 20.0, 10.0, 10.0])
    got, late = run_kernel(s, specs, lateness_ms=10_000, tuning=tuning)
    exp, _ = bruteforce_oracle(s, specs, 10_000)
    assert not late.any()
    assert got[4, 0] == 4  # (1400, 3400] holds the late row first
    assert_features_close(got, exp, feature_names(specs))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the oracle's np.std
def test_huge_amount_does_not_poison_sums(tuning: Tuning) -> None:
    """x*x overflows for |x| > ~1.3e154: the running sums become inf while such a row is in
    the window and must be finite again once it leaves (no inf - inf = NaN residue)."""
    specs = [
        FeatureSpec(name=f"{agg}_2s", agg=agg, column="amount", window_ms=2_000, description="x")
        for agg in ("sum", "mean", "std", "max", "min")
    ]
    amounts = [1.0, 2.0, 1e200, 3.0, 4.0, 5.0, 6.0, 1.5e308, 7.0, 8.0, 9.0, 9.0, 9.5, 9.0]
    s = single(t=[500 * k for k in range(len(amounts))], a=amounts)
    got, _ = run_kernel(s, specs, tuning=tuning)
    exp, _ = bruteforce_oracle(s, specs, 0)
    assert np.isinf(got[3, 2]) and np.isfinite(got[-1]).all()
    assert_features_close(got, exp, feature_names(specs))


# ------------------------------------------------------------------------ hot users

HOT_SPECS: tuple[FeatureSpec, ...] = (
    *DEFAULT_FEATURES,
    *EXTRA_SPECS,
    FeatureSpec(
        name="amount_std_5m", agg="std", column="amount", window_ms=5 * MINUTE_MS, description="d"
    ),
    FeatureSpec(
        name="amount_mean_1h", agg="mean", column="amount", window_ms=HOUR_MS, description="m"
    ),
)


def two_pass_rolling_std(stream: Stream, spec: FeatureSpec) -> np.ndarray:
    """Exact-as-float64-allows rolling std (numpy two-pass per row), in-order streams."""
    out = np.empty(len(stream))
    for u in np.unique(stream.users):
        idx = np.flatnonzero(stream.users == u)
        t, a = stream.times[idx], stream.amounts[idx]
        lo = np.searchsorted(t, t - spec.window_ms, side="right")
        out[idx] = [np.std(a[lo[i] : i + 1]) for i in range(idx.shape[0])]
    return out


@functools.cache
def _hot_in_order_case() -> tuple[Stream, np.ndarray]:
    stream = make_hot_stream(0, hot_events=20_000)
    expected = pandas_oracle(stream, HOT_SPECS)
    for f, spec in enumerate(HOT_SPECS):
        if spec.agg == "std":
            # pandas' online (add/remove) variance is off by up to ~7 after a 1e9 spike has
            # left a 2 s window; the two-pass values are the reference for std
            expected[:, f] = two_pass_rolling_std(stream, spec)
    return stream, expected


def test_hot_stream_has_what_the_hot_tests_need() -> None:
    stream, expected = _hot_in_order_case()
    col = {n: i for i, n in enumerate(feature_names(HOT_SPECS))}
    assert expected[:, col["txn_count_24h"]].max() > 15_000
    hot = expected[:, col["txn_count_24h"]] > 1_000
    std0 = (expected[:, col["amount_std_5m"]] == 0) & (expected[:, col["txn_count_5m"]] > 20)
    assert std0.sum() > 500  # long constant runs fill whole windows
    assert (expected[hot, col["amount_max_1h"]] >= 1e6).any()  # spikes
    assert expected[:, col["merchant_distinct_24h"]].max() > 5_000  # large merchant set
    repeats = expected[:, col["merchant_distinct_2s"]] < expected[:, col["txn_count_2s"]]
    assert (repeats & hot).sum() > 100  # small merchant set: repeats within a window
    assert (expected[:, col["txn_count_1h"]] == 1).sum() > 3  # gaps empty the hour window
    assert len(stream) == 21_000


@pytest.mark.parametrize("name", ["default", "incremental"])
def test_hot_user_matches_pandas(name: str) -> None:
    """20k events of one user in a day (heavy tails, 1e9 spikes, long constant and
    nearly-constant runs, monotone ramps, 5 or 1e9 merchants) among small users."""
    stream, expected = _hot_in_order_case()
    tuning = TUNINGS[name]
    got, late = run_kernel(stream, HOT_SPECS, tuning=tuning)
    state = WindowState(
        HOT_SPECS, lateness_ms=0, initial_entities=1, initial_arena=64, tuning=tuning
    )
    parts = []
    for lo in range(0, len(stream), 4_999):
        p = stream.slice(lo, lo + 4_999)
        parts.append(state.update(p.users, p.times, p.amounts, p.merchants).features)
        state.compact()
    assert not late.any()
    assert state.n_promoted >= 1
    assert_features_close(got, expected, feature_names(HOT_SPECS))
    np.testing.assert_array_equal(np.concatenate(parts), got)  # batching/compaction: exact


@functools.cache
def _hot_out_of_order_case() -> tuple[Stream, np.ndarray, np.ndarray]:
    stream = make_hot_stream(
        1,
        hot_users=3,
        hot_events=2_500,
        span_ms=3 * HOUR_MS,
        small_users=10,
        small_events=400,
        disorder=0.2,
        max_delay_ms=8 * MINUTE_MS,
    )
    return stream, *bruteforce_oracle_np(stream, HOT_SPECS, 5 * MINUTE_MS)


@pytest.mark.parametrize("name", list(TUNINGS))
def test_hot_users_out_of_order_vs_bruteforce(name: str) -> None:
    stream, exp, exp_late = _hot_out_of_order_case()
    got, late = run_kernel(stream, HOT_SPECS, lateness_ms=5 * MINUTE_MS, tuning=TUNINGS[name])
    np.testing.assert_array_equal(late, exp_late)
    assert 0 < late.sum() < len(stream) // 10
    assert_features_close(got, exp, feature_names(HOT_SPECS))


# ------------------------------------------------------------------------ promoted, late

SHORT_LATENESS = 4_000


def _short_specs() -> tuple[FeatureSpec, ...]:
    out = []
    for w in (2_000, 10_000):
        for agg in ("count", "sum", "mean", "std", "max", "min", "distinct", "first", "count_same"):
            col = (
                None if agg == "count"
                else "merchant_id" if agg in ("distinct", "count_same")
                else "amount"
            )  # fmt: skip
            out.append(
                FeatureSpec(name=f"{agg}_{w}", agg=agg, column=col, window_ms=w, description="x")
            )
        for pct in (50, 95):
            out.append(
                FeatureSpec(
                    name=f"quantile{pct}_{w}", agg="quantile", column="amount", window_ms=w,
                    percentile=pct, description="x",
                )
            )  # fmt: skip
    out.append(
        FeatureSpec(name="since", agg="since_last", column=None, window_ms=None, description="x")
    )
    out.append(
        FeatureSpec(name="ewm", agg="ewm_mean", column="amount", window_ms=2_000, description="x")
    )
    out.append(
        FeatureSpec(name="last", agg="last", column="amount", window_ms=None, description="x")
    )
    return tuple(out)


SHORT_SPECS = _short_specs()


@functools.cache
def _shuffled_hot_case(seed: int) -> tuple[Stream, np.ndarray, np.ndarray]:
    stream = make_shuffled_hot_stream(seed)
    return stream, *bruteforce_oracle_np(stream, SHORT_SPECS, SHORT_LATENESS)


def late_row_coverage(stream: Stream, lateness_ms: int, w: int) -> dict[str, int]:
    """What the accepted out-of-order rows of users with > 1000 events exercise in the
    window of length ``w``, from the definition (brute force, no kernel code)."""
    users, counts = np.unique(stream.users, return_counts=True)
    hot = set(users[counts > 1000].tolist())
    cov = dict.fromkeys(
        ("late_rows", "both_sides", "tie", "max_after", "min_after", "merchant_around",
         "merchant_only_before", "at_lateness_bound", "constant"),
        0,
    )  # fmt: skip
    hist: dict[int, list[tuple[int, float, int]]] = {}
    for i in range(len(stream)):
        u, t = int(stream.users[i]), int(stream.times[i])
        rows = hist.setdefault(u, [])
        tmax = max((r[0] for r in rows), default=t)
        if t < tmax - lateness_ms:
            continue
        rows.append((t, float(stream.amounts[i]), int(stream.merchants[i])))
        if u not in hot or t >= tmax:
            continue
        ht = np.array([r[0] for r in rows])
        ha = np.array([r[1] for r in rows])
        hm = np.array([r[2] for r in rows])
        after = ht > t  # (t, tmax]
        own = (ht > t - w) & ~after
        before = own & (ht <= tmax - w)  # (t - w, tmax - w]
        tmax_win = ht > tmax - w
        cov["late_rows"] += 1
        cov["both_sides"] += int(after.any() and before.any())
        cov["tie"] += int((ht[:-1] == t).any())
        for name, best in (("max_after", np.max), ("min_after", np.min)):
            top = best(ha[tmax_win])
            cov[name] += int(top in ha[tmax_win & after] and top not in ha[tmax_win & own])
        cov["merchant_around"] += int(
            np.isin(hm[after], hm[own & tmax_win]).any() and np.isin(hm[after], hm[before]).any()
        )
        # the row's merchant seen before it only where its window leaves TMAX's
        in_both = own & tmax_win & (np.arange(ht.shape[0]) < ht.shape[0] - 1)
        cov["merchant_only_before"] += int(hm[-1] in hm[before] and hm[-1] not in hm[in_both])
        cov["at_lateness_bound"] += int(t == tmax - lateness_ms and (ht == t - w).any())
        cov["constant"] += int(own.sum() > 1 and np.ptp(ha[own]) == 0)
    return cov


def test_shuffled_hot_stream_has_what_the_late_tests_need() -> None:
    stream, _, late = _shuffled_hot_case(0)
    assert 0 < late.sum() < len(stream) // 10
    for w in (2_000, 10_000):
        cov = late_row_coverage(stream, SHORT_LATENESS, w)
        assert cov["late_rows"] > 2_000
        # rare: a late row exactly at the lateness bound whose window starts exactly at the
        # eviction horizon (w = 10 s), and a merchant last seen > 10 s before TMAX
        assert cov.pop("at_lateness_bound") >= 2, (w, cov)
        assert cov.pop("merchant_only_before") >= 10, (w, cov)
        assert min(cov.values()) >= 200, (w, cov)


@pytest.mark.parametrize("seed", [0, 1])
def test_promoted_late_rows_derived_from_state(seed: int, tuning: Tuning) -> None:
    """Out-of-order rows of promoted users: their windows derived from the state at TMAX
    (corrected by the rows after them and the rows that left the window since), checked
    against brute force; constant windows give exactly 0.0 like pandas."""
    stream, exp, exp_late = _shuffled_hot_case(seed)
    got, late = run_kernel(stream, SHORT_SPECS, lateness_ms=SHORT_LATENESS, tuning=tuning)
    np.testing.assert_array_equal(late, exp_late)
    names = feature_names(SHORT_SPECS)
    assert_features_close(got, exp, names)
    if tuning.promote_above == 0 and tuning.late_scan_factor == 0:
        # every row from the state (a two-pass scan leaves ~1e-17 for runs of 0.1)
        col = {n: i for i, n in enumerate(names)}
        for w in (2_000, 10_000):
            constant = ~late & (exp[:, col[f"max_{w}"]] == exp[:, col[f"min_{w}"]])
            assert constant.sum() > 1_000
            assert (got[constant, col[f"std_{w}"]] == 0.0).all()


@pytest.mark.parametrize("agg", [a for a in AGGS if a not in DERIVED_AGGS])
def test_each_aggregation_matches_its_reference(agg: str, tuning: Tuning) -> None:
    """numbagg's shape: every aggregation, alone in its spec list (so with its own state
    layout), against its entry in oracle.REFERENCES, on the shuffled hot stream (promoted
    users, late rows, ties, evictions) under every tuning mode."""
    assert set(REFERENCES) == set(AGGS)  # a new aggregation needs its reference
    stream, exp, exp_late = _shuffled_hot_case(0)
    cols = [f for f, s in enumerate(SHORT_SPECS) if s.agg == agg]
    specs = [SHORT_SPECS[f] for f in cols]
    got, late = run_kernel(stream, specs, lateness_ms=SHORT_LATENESS, tuning=tuning)
    np.testing.assert_array_equal(late, exp_late)
    assert_features_close(got, exp[:, cols], feature_names(specs))


def test_numpy_oracles_match_reference_oracles() -> None:
    stream = make_stream(10, n_users=12, n_events=700, disorder=0.3, max_delay_ms=15 * MINUTE_MS)
    ref, ref_late = bruteforce_oracle(stream, HOT_SPECS, 5 * MINUTE_MS)
    got, late = bruteforce_oracle_np(stream, HOT_SPECS, 5 * MINUTE_MS)
    np.testing.assert_array_equal(late, ref_late)
    np.testing.assert_allclose(got, ref, rtol=1e-13, atol=0, equal_nan=True)
    s = make_stream(3, n_users=3, n_events=900)
    for u in np.unique(s.users):
        idx = np.flatnonzero(s.users == u)
        t, m = s.times[idx], s.merchants[idx]
        for w in (2_000, HOUR_MS):
            brute = [len(set(m[: i + 1][t[: i + 1] > t[i] - w])) for i in range(idx.shape[0])]
            np.testing.assert_array_equal(distinct_rolling_counter(t, m, w), brute)


# ------------------------------------------------------------------------ spec validation


def test_spec_helpers() -> None:
    assert max_window_ms(DEFAULT_FEATURES) == DAY_MS
    assert len(feature_names(DEFAULT_FEATURES)) == 19
    assert feature_names(DEFAULT_FEATURES)[-1] == "first_time_at_merchant_24h"
    assert len(kernel_specs(DEFAULT_FEATURES)) == 16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"agg": "sum", "column": None, "window_ms": 1}, "requires column"),
        ({"agg": "count", "column": "amount", "window_ms": 1}, "takes no column"),
        ({"agg": "count", "column": None, "window_ms": 0}, "positive integer window"),
        ({"agg": "ewm_mean", "column": "amount", "window_ms": None}, "halflife"),
        ({"agg": "since_last", "column": None, "window_ms": 5}, "takes no window_ms"),
        ({"agg": "median", "column": "amount", "window_ms": 5}, "unknown agg"),
        ({"agg": "distinct", "column": "amount", "window_ms": 5}, "requires column"),
        ({"agg": "quantile", "column": "amount", "window_ms": 5}, "percentile"),
        ({"agg": "quantile", "column": "amount", "window_ms": 5, "percentile": 100}, "1..99"),
        ({"agg": "max", "column": "amount", "window_ms": 5, "percentile": 50}, "percentile"),
        ({"agg": "last", "column": "amount", "window_ms": 5}, "takes no window_ms"),
        ({"agg": "count_same", "column": "amount", "window_ms": 5}, "requires column"),
        ({"agg": "ratio", "column": None, "window_ms": None, "inputs": ("a",)}, "2 input"),
        ({"agg": "below", "column": None, "window_ms": None, "inputs": ("a",)}, "threshold"),
        (
            {
                "agg": "equals",
                "column": None,
                "window_ms": None,
                "inputs": ("a",),
                "threshold": float("nan"),
            },
            "finite threshold",
        ),
        ({"agg": "count", "column": None, "window_ms": 5, "inputs": ("a",)}, "derived"),
    ],
)
def test_invalid_spec_raises(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeatureSpec(name="x", description="d", **kwargs)  # type: ignore[arg-type]


def test_duplicate_names_raise() -> None:
    with pytest.raises(ValueError, match="duplicate feature names"):
        validate_specs(DEFAULT_FEATURES + DEFAULT_FEATURES[:1])
    with pytest.raises(ValueError, match="at least one"):
        validate_specs(())
