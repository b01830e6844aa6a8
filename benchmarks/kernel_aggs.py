"""What each aggregation costs: WindowState.update with one feature at a time, side by side.

Every aggregation of the vocabulary (``features.spec.AGGS`` less the derived ones, which are
numpy column arithmetic after the kernels) over a 24-hour window, alone with a 24-hour
``count`` (the floor every windowed feature pays: the row insert, eviction and window
bounds), on the same Zipf events in one process, best of ``--repeats`` fresh states; then the
whole default feature set and the 11 window features it had before ``last``, ``first``,
``quantile``, ``count_same`` and the derived ones. Reported as events/s and as time per
event above the count floor.
The busiest user's share and the rows its window holds are printed: that is where a
per-entity algorithm's cost lives.

    python -m benchmarks.kernel_aggs [--events 1000000] [--users 20000] [--days 2]
        [--zipf 1.5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

from benchmarks._common import (
    ENGINE_FEATURES,
    describe_activity,
    header,
    make_events,
    table,
    warm_up_kernels,
)
from features.spec import AGGS, DAY_MS, DEFAULT_FEATURES, DERIVED_AGGS, FeatureSpec
from features.state import WindowState
from streams.generator import GeneratedEvents

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_COLUMN = {"count": None, "since_last": None, "distinct": "merchant_id",
           "count_same": "merchant_id"}  # fmt: skip


def spec_for(agg: str) -> FeatureSpec:
    """``agg`` over a 24-hour window (a halflife for ewm_mean; none where it takes none)."""
    window = None if agg in ("since_last", "last") else DAY_MS
    return FeatureSpec(
        name=f"f_{agg}",
        agg=agg,  # type: ignore[arg-type]
        column=_COLUMN.get(agg, "amount"),  # type: ignore[arg-type]
        window_ms=window,
        description="x",
        percentile=50 if agg == "quantile" else None,
    )


def best_seconds(specs: tuple[FeatureSpec, ...], events: GeneratedEvents, repeats: int) -> float:
    """Best wall seconds of one update over all events, each on a fresh state."""
    best = float("inf")
    for _ in range(repeats):
        state = WindowState(specs)
        start = time.perf_counter()
        state.update(events.user_id, events.event_time_ms, events.amount, events.merchant_id)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--zipf", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    span = args.days * DAY_MS
    events = make_events(
        args.events, users=args.users, start_ms=START_MS, span_ms=span, activity="zipf",
        seed=1, zipf=args.zipf,
    )  # fmt: skip
    header(
        "kernel_aggs: the cost of each aggregation (WindowState.update)",
        f"""
data: {args.events:,} events, {args.users:,} users, Zipf({args.zipf}) activity over
  {args.days:g} days, in order; {describe_activity(events, span)}
method: each aggregation over 24 h beside a 24 h count, one update over all events on a
  fresh state, best of {args.repeats}; 'above count' is time per event above count alone
""",
    )
    warm_up_kernels()
    floor_spec = spec_for("count")
    floor = best_seconds((floor_spec,), events, args.repeats)
    rows: list[list[object]] = [["count (alone)", args.events / floor, "-"]]
    aggs = [a for a in AGGS if a not in DERIVED_AGGS and a != "count"]
    for agg in aggs:
        took = best_seconds((floor_spec, spec_for(agg)), events, args.repeats)
        above_ns = (took - floor) / args.events * 1e9
        rows.append([f"count + {agg}", args.events / took, f"{above_ns:.0f} ns"])
    took = best_seconds(ENGINE_FEATURES, events, args.repeats)
    rows.append(
        [f"the {len(ENGINE_FEATURES)} window features (before this vocabulary)",
         args.events / took, f"{(took - floor) / args.events * 1e9:.0f} ns"]
    )  # fmt: skip
    took = best_seconds(DEFAULT_FEATURES, events, args.repeats)
    rows.append(
        [f"all {len(DEFAULT_FEATURES)} default features", args.events / took,
         f"{(took - floor) / args.events * 1e9:.0f} ns"]
    )  # fmt: skip
    table(rows, ["features", "events/s", "above count"])


if __name__ == "__main__":
    main()
