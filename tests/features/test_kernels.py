"""Kernel semantics vs independent oracles (pandas for in-order, brute force for disorder)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from features import kernels as K
from features.spec import (
    DAY_MS,
    DEFAULT_FEATURES,
    HOUR_MS,
    MINUTE_MS,
    FeatureSpec,
    feature_names,
    max_window_ms,
    validate_specs,
)
from features.state import WindowState
from tests.features.oracle import Stream, bruteforce_oracle, make_stream, pandas_oracle

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
)


def run_kernel(
    stream: Stream, specs: Sequence[FeatureSpec], lateness_ms: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Drive ``process_events`` directly (dense ids, arena big enough to never run out)."""
    enc = K.encode_specs(specs)
    _, ent = np.unique(stream.users, return_inverse=True)
    ent = ent.astype(np.int64)
    n = len(stream)
    n_ent = int(ent.max()) + 1 if n else 1
    seg = np.zeros((n_ent, K.SEG_COLS), dtype=np.int64)
    seg[:, K.TMAX] = K.NO_TIME
    seg[:, K.EVICTED] = K.NO_TIME
    ewm = np.zeros((n_ent, 2 * len(enc.halflife)))
    size = 8 * n + 1024
    arena_t = np.empty(size, dtype=np.int64)
    arena_a = np.empty(size)
    arena_m = np.empty(size, dtype=np.int64)
    meta = np.zeros(K.META_SIZE, dtype=np.int64)
    out = np.empty((n, len(specs)))
    late = np.zeros(n, dtype=bool)
    done = K.process_events(
        ent, stream.times, stream.amounts, stream.merchants, 0,
        enc.agg, enc.col, enc.win_id, enc.uwin, enc.slot, enc.halflife,
        lateness_ms, enc.retention_ms, 4,
        seg, ewm, arena_t, arena_a, arena_m, meta, out, late,
    )  # fmt: skip
    assert done == n
    return out, late


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


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("extra", [False, True], ids=["default", "extra_specs"])
def test_in_order_matches_pandas(seed: int, extra: bool) -> None:
    specs = DEFAULT_FEATURES + (EXTRA_SPECS if extra else ())
    stream = make_stream(seed, n_users=25, n_events=1200)
    got, late = run_kernel(stream, specs, lateness_ms=0)
    assert not late.any()
    assert_features_close(got, pandas_oracle(stream, specs), feature_names(specs))


def test_stream_has_ties_bursts_and_long_gaps() -> None:
    """Guard the generator: the pandas comparison is only meaningful if it hits edge cases."""
    s = make_stream(0, n_users=25, n_events=1200)
    gaps = np.concatenate([np.diff(np.sort(s.times[s.users == u])) for u in np.unique(s.users)])
    assert (gaps == 0).sum() > 50
    assert (gaps > DAY_MS).sum() > 20
    assert (gaps == HOUR_MS).sum() > 5
    assert (gaps < 1_000).sum() > 50


# ------------------------------------------------------------------------ out of order


@pytest.mark.parametrize("seed", [10, 11, 12])
@pytest.mark.parametrize("lateness_ms", [0, 5 * MINUTE_MS])
def test_out_of_order_vs_bruteforce(seed: int, lateness_ms: int) -> None:
    specs = DEFAULT_FEATURES + EXTRA_SPECS
    stream = make_stream(seed, n_users=12, n_events=700, disorder=0.3, max_delay_ms=15 * MINUTE_MS)
    got, late = run_kernel(stream, specs, lateness_ms=lateness_ms)
    exp, exp_late = bruteforce_oracle(stream, specs, lateness_ms)
    np.testing.assert_array_equal(late, exp_late)
    assert 0 < late.sum() < len(stream) // 2
    assert np.isnan(got[late]).all()
    assert_features_close(got, exp, feature_names(specs))


def test_lateness_is_per_entity() -> None:
    # user 1 advances to t=10_000; user 2's old events are not late, user 1's are
    s = single(t=[10_000, 100, 9_000, 8_999, 9_500], u=[1, 2, 1, 1, 2])
    _, late = run_kernel(s, DEFAULT_FEATURES, lateness_ms=1_000)
    assert late.tolist() == [False, False, False, True, False]


def test_out_of_order_excludes_future_rows() -> None:
    s = single(t=[5_000, 1_000, 3_000], a=[100.0, 1.0, 2.0], m=[1, 2, 3])
    got, late = run_kernel(s, DEFAULT_FEATURES, lateness_ms=10_000)
    assert not late.any()
    col = {n: i for i, n in enumerate(feature_names(DEFAULT_FEATURES))}
    assert got[2, col["txn_count_5m"]] == 2  # 1_000 and 3_000, not 5_000
    assert got[2, col["amount_sum_1h"]] == 3.0
    assert got[2, col["seconds_since_last_txn"]] == 2.0
    assert got[1, col["seconds_since_last_txn"]] == -1.0  # nothing earlier in time
    assert got[2, col["merchant_distinct_24h"]] == 2


# ------------------------------------------------------------------------ batching


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_batch_size_does_not_change_results(batch: int) -> None:
    stream = make_stream(5, n_users=20, n_events=1500, disorder=0.2)
    whole = WindowState(lateness_ms=5 * MINUTE_MS).update(
        stream.users, stream.times, stream.amounts, stream.merchants
    )
    st = WindowState(lateness_ms=5 * MINUTE_MS, initial_entities=2, initial_arena=16)
    feats, lates = [], []
    for lo in range(0, len(stream), batch):
        part = stream.slice(lo, lo + batch)
        r = st.update(part.users, part.times, part.amounts, part.merchants)
        feats.append(r.features)
        lates.append(r.late)
    np.testing.assert_array_equal(np.concatenate(feats), whole.features)
    np.testing.assert_array_equal(np.concatenate(lates), whole.late)


# ------------------------------------------------------------------------ edge cases


def test_single_event() -> None:
    got, _ = run_kernel(single(t=[123], a=[42.5], m=[9]), DEFAULT_FEATURES)
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
    }
    assert dict(zip(feature_names(DEFAULT_FEATURES), got[0].tolist(), strict=True)) == expected


def test_all_events_same_time() -> None:
    a = [3.0, 5.0, 5.0, 11.0]
    s = single(t=[1000] * 4, a=a, m=[1, 2, 1, 3])
    got, _ = run_kernel(s, DEFAULT_FEATURES)
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
def test_window_boundary(w: int) -> None:
    """Window is (t - w, t]: an event at exactly t - w is out, at t - w + 1 is in."""
    specs = [s for s in DEFAULT_FEATURES if s.agg == "count" and s.window_ms == w]
    got, _ = run_kernel(single(t=[0, w, 10 * w, 11 * w - 1]), specs)
    assert got[:, 0].tolist() == [1, 1, 1, 2]


def test_state_retention_keeps_since_last_exact_after_eviction() -> None:
    # second event is 3 days later: history evicted, since_last must still see the first
    s = single(t=[0, 3 * DAY_MS, 3 * DAY_MS + 1_000])
    got, _ = run_kernel(s, DEFAULT_FEATURES)
    col = feature_names(DEFAULT_FEATURES).index("seconds_since_last_txn")
    assert got[:, col].tolist() == [-1.0, 3 * DAY_MS / 1000.0, 1.0]


# ------------------------------------------------------------------------ spec validation


def test_spec_helpers() -> None:
    assert max_window_ms(DEFAULT_FEATURES) == DAY_MS
    assert len(feature_names(DEFAULT_FEATURES)) == 11
    assert feature_names(DEFAULT_FEATURES)[-2:] == ("seconds_since_last_txn", "amount_ewm_mean_1h")


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
