"""Backfill speed: featflow's Numba window state vs pandas groupby time-rolling.

Why this baseline: ``groupby("user").rolling("24h", on="ts")`` is what a data scientist
writes for these features, and it runs in pandas' compiled window code (one call for all
groups), so it is the fair vectorized reference. pandas has no rolling ``nunique``; the only
pandas way is ``rolling(...).apply(len(np.unique(x)))``, a Python call per row (~80k rows/s,
so ~12 s at 1M rows). By default it runs on every user; ``--distinct-user-frac`` below 1
times it on a random subset of users and extrapolates per event, for quick runs. The ratio
against the other ten pandas features alone is printed too: it under-counts pandas' work, a
lower bound.

Both sides are verified to agree (rtol 1e-9, atol 1e-9 like the test suite) before any
figure is printed.

    python -m benchmarks.backfill_vs_pandas [--events 1000000] [--users 100000] [--days 30]
        [--activity zipf|uniform] [--batched] [--distinct-user-frac 0.05]

The kernels scan the window's rows for users with short histories and keep O(1) running
state for the rest (see features/kernels/), so ``--days`` and ``--activity`` move both
sides' figures; report the flags with the figures.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from benchmarks._common import (
    ACTIVITIES,
    ACTIVITY_HELP,
    ENGINE_FEATURES,
    describe_activity,
    header,
    make_events,
    table,
    verdict,
    warm_up_kernels,
)
from features.backfill import BackfillResult, backfill, write_output
from features.event_files import from_records, read_events
from features.spec import DAY_MS, DEFAULT_LATENESS_MS, FeatureSpec
from features.state import WindowState
from streams.generator import generate_events
from testing.oracle import Stream, pandas_oracle

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RTOL = ATOL = 1e-9  # as tests/features/test_kernels.py: atol only matters for values ~0
TARGET = 20.0


def pandas_features(
    stream: Stream, specs: Sequence[FeatureSpec], *, skip: frozenset[str] = frozenset()
) -> np.ndarray:
    """Every feature via vectorized pandas groupby rolling/ewm/diff, in input row order.

    Aggregations named in ``skip`` are left NaN (used to time ``distinct`` separately).
    Requires per-user non-decreasing times, as ``testing.oracle.pandas_oracle``.
    """
    n = len(stream)
    df = pd.DataFrame(
        {
            "user": stream.users,
            "ts": pd.to_datetime(stream.times, unit="ms"),
            "amount": stream.amounts,
            "merchant_id": stream.merchants.astype(np.float64),  # rolling needs floats
        }
    )
    groups = df.groupby("user", sort=True)
    # groupby(sort=True).rolling yields rows grouped by sorted user, arrival order inside:
    # exactly a stable argsort of the user column.
    back = np.argsort(stream.users, kind="stable")
    out = np.full((n, len(specs)), np.nan)
    for f, s in enumerate(specs):
        if s.agg in skip:
            continue
        if s.agg == "since_last":
            gap = groups["ts"].diff().dt.total_seconds()
            out[:, f] = gap.fillna(-1.0).to_numpy()
        elif s.agg == "ewm_mean":
            # ms-resolution times (see pandas_oracle): ns floats lose precision
            ms_times = stream.times.astype("datetime64[ms]")
            ewm = groups["amount"].ewm(
                halflife=pd.Timedelta(milliseconds=s.window_ms), times=ms_times
            )
            out[back, f] = ewm.mean().to_numpy()
        else:
            roll = groups.rolling(f"{s.window_ms}ms", on="ts")[s.column or "amount"]
            if s.agg == "std":
                vals = roll.std(ddof=0)
            elif s.agg == "distinct":
                vals = roll.apply(lambda x: len(np.unique(x)), raw=True)
            else:
                vals = getattr(roll, s.agg)()
            out[back, f] = vals.to_numpy()
    return out


def _self_check(specs: Sequence[FeatureSpec]) -> None:
    """The vectorized baseline must equal the tests' per-group oracle (else it is not fair)."""
    ev = generate_events(3000, users=40, start_ms=START_MS, mean_gap_ms=120_000, seed=7)
    stream = Stream(ev.user_id, ev.event_time_ms, ev.amount, ev.merchant_id)
    np.testing.assert_allclose(
        pandas_features(stream, specs), pandas_oracle(stream, specs), rtol=RTOL, atol=ATOL
    )


def _window_std(stream: Stream, i: int, window_ms: int) -> float:
    """Exact two-pass population std of row ``i``'s window, straight from the definition."""
    same = np.flatnonzero(stream.users == stream.users[i])
    same = same[same <= i]
    inside = same[stream.times[same] > stream.times[i] - window_ms]
    return float(np.std(stream.amounts[inside]))


def _check_agreement(
    ff: np.ndarray,
    pd10: np.ndarray,
    pd_distinct: np.ndarray,
    rows: np.ndarray,
    stream: Stream,
    specs: Sequence[FeatureSpec],
) -> None:
    """featflow == pandas at rtol/atol 1e-9, or raise.

    One documented exception: pandas' rolling variance is updated online (add/remove), so
    after long streams it can be off by ~1e-9 absolute. Such std rows (at most 1000) are
    accepted only if featflow equals an exact two-pass std of the window computed here.
    """
    for f, spec in enumerate(specs):
        if spec.agg == "distinct":
            actual, expected = ff[rows, f], pd_distinct[:, f]
        else:
            actual, expected = ff[:, f], pd10[:, f]
        bad = np.flatnonzero(~np.isclose(actual, expected, rtol=RTOL, atol=ATOL))
        if not bad.size:
            continue
        if spec.agg != "std" or bad.size > 1000:
            np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=spec.name)
        exact = np.array([_window_std(stream, int(i), spec.window_ms or 0) for i in bad])
        np.testing.assert_allclose(actual[bad], exact, rtol=RTOL, atol=ATOL, err_msg=spec.name)
        worst = float(np.abs(actual[bad] - expected[bad]).max())
        print(
            f"agreement note: {spec.name}: {bad.size} rows differ from pandas by up to"
            f" {worst:.2g}; on those rows featflow equals an exact two-pass std of the window"
            " (pandas updates rolling variance online)"
        )
    n, k = ff.shape
    print(
        f"agreement: OK on all {n:,} rows x {k - 1} features and on {len(rows):,} rows"
        " for merchant_distinct_24h"
    )


def _timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def _featflow_update(stream: Stream, specs: Sequence[FeatureSpec], batch: int) -> np.ndarray:
    """All features through WindowState.update in ``batch``-sized calls (0: one call)."""
    state = WindowState(specs, lateness_ms=DEFAULT_LATENESS_MS)
    n = len(stream)
    step = batch or n
    parts = [
        state.update(
            stream.users[i : i + step],
            stream.times[i : i + step],
            stream.amounts[i : i + step],
            stream.merchants[i : i + step],
        ).features
        for i in range(0, n, step)
    ]
    return np.concatenate(parts) if parts else np.empty((0, len(specs)))


def _backfill_file(source: Path, output: Path, now_ms: int) -> BackfillResult:
    """`featflow backfill --input source --output output --no-store`, minus the CLI."""
    result = backfill(read_events(source, now_ms=now_ms), lateness_ms=DEFAULT_LATENESS_MS)
    write_output(result, output)
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=30.0, help="event-time span of the data")
    parser.add_argument("--activity", choices=ACTIVITIES, default="zipf", help=ACTIVITY_HELP)
    parser.add_argument(
        "--batched", action="store_true", help="also time WindowState.update in 10k-event calls"
    )
    parser.add_argument(
        "--distinct-user-frac",
        type=float,
        default=1.0,
        help="fraction of users on which pandas' rolling-apply nunique is timed (1: all)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    specs = ENGINE_FEATURES
    n = args.events

    header(
        "backfill_vs_pandas: featflow backfill vs pandas groupby time-rolling",
        f"""
data: generate_events({n:,} events, {args.users:,} users, {args.days:g} days, in order),
  user activity: {args.activity}
featflow update: WindowState.update over numpy columns, all {len(specs)} features, one call
  (with --batched also in 10k-event calls, as the stream worker does); JIT warmed up first.
featflow backfill, parquet: what `featflow backfill --input events.parquet --no-store` does:
  read the file, validate it column-wise, the kernels, the offline Arrow table, write the
  output parquet. JSON lines: the same from in-memory JSON records through the stream's
  per-record decoder (no file I/O).
pandas: groupby('user').rolling('<w>ms', on='ts').<agg>() per windowed feature, groupby
  .ewm(times=...) and groupby diff; from numpy columns to an [n, F] matrix in input order.
pandas distinct: groupby.rolling.apply(len(np.unique)), timed on a random
  {args.distinct_user_frac:.0%} of users (extrapolated per event below 100%).
agreement: rtol {RTOL:g}, atol {ATOL:g}, checked before timing figures are printed.""",
    )

    _self_check(specs)
    span_ms = args.days * DAY_MS
    ev = make_events(
        n,
        users=args.users,
        start_ms=START_MS,
        span_ms=span_ms,
        activity=args.activity,
        seed=args.seed,
    )
    stream = Stream(ev.user_id, ev.event_time_ms, ev.amount, ev.merchant_id)
    print(describe_activity(ev, span_ms))
    raw = [value for _, value in ev.records()]
    scratch = Path(tempfile.mkdtemp(prefix="featflow-backfill-bench-"))
    source = scratch / "events.parquet"
    pq.write_table(ev.table(), source)
    now_ms = int(ev.event_time_ms.max()) + 1

    warm_up_kernels()

    t_update, ff = _timed(_featflow_update, stream, specs, 0)
    t_backfill, result = _timed(_backfill_file, source, scratch / "features.parquet", now_ms)
    assert result.table.num_rows == n and not result.rejected, "backfill rejected rows"
    t_backfill_json, result_json = _timed(
        lambda: backfill(from_records(raw, now_ms=now_ms), lateness_ms=DEFAULT_LATENESS_MS)
    )
    assert result_json.table.equals(result.table), "JSON and parquet input disagree"
    shutil.rmtree(scratch)
    t_update_10k = 0.0
    if args.batched:
        t_update_10k, ff_10k = _timed(_featflow_update, stream, specs, 10_000)
        np.testing.assert_array_equal(ff, ff_10k)  # batch boundaries must not change results

    t_pandas10, pd10 = _timed(pandas_features, stream, specs, skip=frozenset({"distinct"}))

    rng = np.random.default_rng(args.seed)
    all_users = np.unique(stream.users)
    k = max(1, int(len(all_users) * args.distinct_user_frac))
    chosen = rng.choice(all_users, size=k, replace=False)
    rows = np.flatnonzero(np.isin(stream.users, chosen))
    sub = Stream(
        stream.users[rows], stream.times[rows], stream.amounts[rows], stream.merchants[rows]
    )
    distinct_only = frozenset(s.agg for s in specs) - {"distinct"}
    t_distinct_sub, pd_distinct = _timed(pandas_features, sub, specs, skip=distinct_only)
    t_distinct_est = t_distinct_sub * n / max(len(rows), 1)

    # Agreement before reporting.
    _check_agreement(ff, pd10, pd_distinct, rows, stream, specs)

    t_pandas_est = t_pandas10 + t_distinct_est
    how = "measured" if len(rows) == n else "extrapolated"
    print()
    rows_out: list[tuple[str, float, float]] = [
        ("featflow WindowState.update (1 call)", t_update, n / t_update)
    ]
    if args.batched:
        rows_out.append(
            ("featflow WindowState.update (10k-event calls)", t_update_10k, n / t_update_10k)
        )
    table(
        [
            *rows_out,
            ("featflow backfill, parquet file to parquet file", t_backfill, n / t_backfill),
            (
                "featflow backfill, JSON records (per-record decode)",
                t_backfill_json,
                n / t_backfill_json,
            ),
            ("pandas, 10 features (no distinct), measured", t_pandas10, n / t_pandas10),
            (
                f"pandas distinct, measured on {len(rows):,} rows ({k:,} users)",
                t_distinct_sub,
                len(rows) / t_distinct_sub,
            ),
            (f"pandas distinct, {how} for all rows", t_distinct_est, n / t_distinct_est),
            (f"pandas, all 11 features ({how})", t_pandas_est, n / t_pandas_est),
        ],
        ["what", "seconds", "events/s"],
    )
    ratios = {
        f"pandas_all ({how}) / featflow_update": t_pandas_est / t_update,
        "pandas_10_measured / featflow_update (lower bound)": t_pandas10 / t_update,
        f"pandas_all ({how}) / featflow_backfill_parquet": t_pandas_est / t_backfill,
        "pandas_10_measured / featflow_backfill_parquet (lower bound)": t_pandas10 / t_backfill,
        f"pandas_all ({how}) / featflow_backfill_json": t_pandas_est / t_backfill_json,
    }
    print()
    table([(k, v) for k, v in ratios.items()], ["ratio (speed-up of featflow)", "x"])
    print()
    verdict(f"speed-up vs pandas, all features {how} (kernels)", t_pandas_est / t_update, TARGET)
    verdict(
        f"speed-up vs pandas, all features {how} (backfill, parquet file to file)",
        t_pandas_est / t_backfill,
        TARGET,
    )
    return {
        "featflow_update_s": t_update,
        "featflow_backfill_s": t_backfill,
        "featflow_backfill_json_s": t_backfill_json,
        "pandas10_s": t_pandas10,
        "pandas_all_est_s": t_pandas_est,
        **ratios,
    }


if __name__ == "__main__":
    main()
