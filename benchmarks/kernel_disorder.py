"""Window kernels under bounded disorder: WindowState.update in order vs shuffled arrival.

Real producers interleave, so a busy user's events arrive a little out of event-time order.
Each out-of-order event of a promoted (long-history) user is inserted in time order and
its features are derived from the incremental state anchored at the user's max time
(cost: the rows between it and that time, see features/kernels/late.py); forcing the window
scan instead (``Tuning.late_scan_factor`` huge, the behaviour before that path existed)
shows what it saves. Every case runs in this one process, side by side.

    python -m benchmarks.kernel_disorder [--events 400000] [--users 20000] [--days 1]
        [--delays 2000 30000] [--activity zipf|uniform] [--repeats 3] [--no-scan]

Disorder: each event's arrival is its event time plus a uniform delay of up to D ms, and
events are fed in arrival order (a stable sort: ties keep generation order), so an event
arrives after events up to D ms newer. D stays below the allowed lateness (60 s): every
event is accepted. ``--days`` sets the event-time span, hence how many rows a busy user's
24 h window holds and how many of its events a delay of D reorders; report the flags.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._common import (
    ACTIVITIES,
    ACTIVITY_HELP,
    describe_activity,
    header,
    make_events,
    table,
    warm_up_kernels,
)
from features.kernels import DEFAULT_TUNING, Tuning
from features.spec import DAY_MS, DEFAULT_FEATURES, DEFAULT_LATENESS_MS
from features.state import WindowState
from testing.oracle import Stream

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RTOL = ATOL = 1e-9  # as tests/features/test_kernels.py


# out-of-order rows of promoted entities scan their windows (the path before)
LATE_ROWS_SCANNED = DEFAULT_TUNING._replace(late_scan_factor=1 << 40)


def shuffled(stream: Stream, max_delay_ms: int, seed: int) -> Stream:
    """Arrival order when each event is delayed by up to ``max_delay_ms`` (uniform)."""
    if max_delay_ms <= 0:
        return stream
    rng = np.random.default_rng(seed)
    arrival = stream.times + rng.integers(0, max_delay_ms + 1, size=len(stream))
    order = np.argsort(arrival, kind="stable")
    return Stream(
        stream.users[order], stream.times[order], stream.amounts[order], stream.merchants[order]
    )


def out_of_order_share(stream: Stream) -> float:
    """Fraction of events older than an earlier-arrived event of the same user."""
    order = np.argsort(stream.users, kind="stable")
    users, times = stream.users[order], stream.times[order]
    starts = np.r_[True, users[1:] != users[:-1]]
    # running max per user: offset each user's times so a plain running max restarts
    group = np.cumsum(starts) - 1
    shift = (times.max() - times.min() + 1) * group
    run_max = np.maximum.accumulate(times + shift) - shift
    behind = np.r_[False, times[1:] < run_max[:-1]] & ~starts
    return float(behind.mean()) if len(stream) else 0.0


def timed_update(
    stream: Stream, repeats: int, tuning: Tuning = DEFAULT_TUNING
) -> tuple[float, np.ndarray]:
    """Best of ``repeats`` fresh-state WindowState.update calls over the whole stream."""
    best, feats = float("inf"), np.empty(0)
    for _ in range(repeats):
        state = WindowState(DEFAULT_FEATURES, lateness_ms=DEFAULT_LATENESS_MS, tuning=tuning)
        start = time.perf_counter()
        res = state.update(stream.users, stream.times, stream.amounts, stream.merchants)
        best = min(best, time.perf_counter() - start)
        assert not res.late.any(), "a delay below the lateness must never dead-letter"
        feats = res.features
    return best, feats


def small_batch_us(stream: Stream, calls: int = 2_000) -> float:
    """Microseconds per ``WindowState.update`` of a one-event batch on a filled state.

    The stream worker calls ``update`` once per fetched batch and partition, so this fixed
    cost (argument checks, Numba's dispatch, the result arrays) is paid per batch.
    """
    state = WindowState(DEFAULT_FEATURES, lateness_ms=DEFAULT_LATENESS_MS)
    state.update(stream.users, stream.times, stream.amounts, stream.merchants)
    one = [np.array([x]) for x in (stream.users[-1], stream.times[-1] + 1, 1.0, 7)]
    one[2] = one[2].astype(np.float64)
    start = time.perf_counter()
    for _ in range(calls):
        state.update(*one)
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=1.0, help="event-time span of the data")
    parser.add_argument("--activity", choices=ACTIVITIES, default="zipf", help=ACTIVITY_HELP)
    parser.add_argument(
        "--delays",
        type=int,
        nargs="+",
        default=[2_000, 30_000],
        help="max arrival delays (ms of event time) to shuffle within, one case each",
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of N per case")
    parser.add_argument(
        "--no-scan",
        action="store_true",
        help="skip the cases with out-of-order rows scanned (slow: tens of seconds each)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if max(args.delays) >= DEFAULT_LATENESS_MS:
        parser.error(f"delays must stay below the lateness ({DEFAULT_LATENESS_MS} ms)")
    n = args.events

    header(
        "kernel_disorder: window kernels in order vs bounded disorder",
        f"""
data: generate_events({n:,} events, {args.users:,} users, {args.days:g} days),
  user activity: {args.activity}
disorder: arrival = event time + uniform delay in [0, D] ms, D in
  {", ".join(f"{d:,}" for d in args.delays)}; lateness {DEFAULT_LATENESS_MS:,} ms (all accepted)
featflow: WindowState.update, all {len(DEFAULT_FEATURES)} default features, one call over
  numpy columns from a fresh state, best of {args.repeats}; JIT warmed up first.
derived: out-of-order rows of promoted users derived from the incremental state (default);
  scanned: Tuning.late_scan_factor = 2**40, i.e. their windows scanned as before that
  path (run once each; results checked equal to the derived ones at rtol/atol {RTOL:g}).""",
    )
    span_ms = args.days * DAY_MS
    ev = make_events(
        n,
        users=args.users,
        start_ms=START_MS,
        span_ms=span_ms,
        activity=args.activity,
        seed=args.seed,
    )
    print(describe_activity(ev, span_ms))
    base = Stream(ev.user_id, ev.event_time_ms, ev.amount, ev.merchant_id)
    warm_up_kernels()
    timed_update(base, 1)  # untimed: the first large state pays for fresh memory pages

    rows: list[tuple[str, str, float, float, float, float]] = []
    figures: dict[str, float] = {}
    t_in_order = 0.0
    for delay in [0, *args.delays]:
        stream = shuffled(base, delay, args.seed + 1)
        share = out_of_order_share(stream)
        label = "in order" if delay == 0 else f"delay <= {delay / 1000:g} s"
        t_derived, derived = timed_update(stream, args.repeats)
        if delay == 0:
            t_in_order = t_derived
        rows.append((label, "derived", share, t_derived, n / t_derived, t_in_order / t_derived))
        figures[f"{label} derived events/s"] = n / t_derived
        if delay and not args.no_scan:
            t_scan, scanned = timed_update(stream, 1, LATE_ROWS_SCANNED)
            np.testing.assert_allclose(derived, scanned, rtol=RTOL, atol=ATOL)
            rows.append(("", "scanned", share, t_scan, n / t_scan, t_in_order / t_scan))
            figures[f"{label} scanned events/s"] = n / t_scan
            figures[f"{label} derived / scanned"] = t_scan / t_derived
    figures["one-event batch us"] = small_batch_us(base)
    print()
    table(
        rows,
        ["arrival", "out-of-order rows", "share", "seconds", "events/s", "vs in order"],
    )
    if not args.no_scan:
        print()
        table(
            [(k, v) for k, v in figures.items() if k.endswith("/ scanned")],
            ["speed-up of derived over scanned late rows", "x"],
        )
    print(
        f"\nfixed cost per update call (one-event batch on the filled state): "
        f"{figures['one-event batch us']:.1f} us"
    )
    return figures


if __name__ == "__main__":
    main()
