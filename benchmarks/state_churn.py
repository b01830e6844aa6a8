"""Window-state memory over weeks of simulated time with user churn: idle users expire.

Users come and go: each simulated day ``--new-per-day`` users appear and each stays active
for ``--active-days`` days, drawing events with Zipf(1.5) activity (the busiest active user
holds a large share). One partition's :class:`features.state.WindowState` takes the events
in time order, in batches, twice side by side: with an expiry (idle users start afresh and
are dropped, ``features.spec.Expiry``) and without. Printed per simulated day: users seen
so far, users held and the state's ``nbytes`` for each, and the update rate of each.

The product's default expiry (30 days idle, 7 days of delay) holds a user for 37 days after
its last event, so within a few weeks of simulated time it keeps everyone; the default run
here uses ``--idle-days 2 --delay-hours 6`` to show, in two weeks, the plateau the default
reaches after 37 days.

    python -m benchmarks.state_churn [--days 14] [--new-per-day 20000] [--active-days 2]
        [--events-per-day 400000] [--idle-days 2] [--delay-hours 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._common import header, table, warm_up_kernels
from features.spec import DAY_MS, DEFAULT_FEATURES, DEFAULT_LATENESS_MS, HOUR_MS, Expiry
from features.state import WindowState

START_MS = 1_767_225_600_000
MIB = 1024**2


def _day(
    rng: np.random.Generator, day: int, args: argparse.Namespace
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One simulated day's events in time order: the users active that day, Zipf(1.5)."""
    first = day * args.new_per_day  # users appear in id order, new_per_day a day
    active = np.arange(max(0, first - args.new_per_day * (args.active_days - 1)),
                       first + args.new_per_day, dtype=np.int64) + 1  # fmt: skip
    weight = 1.0 / np.arange(1, len(active) + 1) ** 1.5
    ranked = rng.permutation(active)
    users = ranked[rng.choice(len(active), size=args.events_per_day, p=weight / weight.sum())]
    times = np.sort(rng.integers(0, DAY_MS, size=args.events_per_day)) + START_MS + day * DAY_MS
    amount = np.round(rng.lognormal(3.0, 1.0, size=args.events_per_day), 2)
    merchant = rng.integers(1, 10_001, size=args.events_per_day, dtype=np.int64)
    return users, times, amount, merchant


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--new-per-day", type=int, default=20_000)
    parser.add_argument("--active-days", type=int, default=2)
    parser.add_argument("--events-per-day", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--idle-days", type=float, default=2.0)
    parser.add_argument("--delay-hours", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    expiry = Expiry(int(args.idle_days * DAY_MS), int(args.delay_hours * HOUR_MS))
    header("state_churn: one partition's state over weeks of user churn",
           (__doc__ or "").split("\n\n")[1])  # fmt: skip
    print(f"  {args.days} days, {args.new_per_day:,} new users a day, each active "
          f"{args.active_days} days, {args.events_per_day:,} events a day; {expiry}")  # fmt: skip
    warm_up_kernels()
    states = {
        "expiry": WindowState(DEFAULT_FEATURES, lateness_ms=DEFAULT_LATENESS_MS, expiry=expiry),
        "none": WindowState(DEFAULT_FEATURES, lateness_ms=DEFAULT_LATENESS_MS),
    }
    spent = dict.fromkeys(states, 0.0)
    rng = np.random.default_rng(args.seed)
    seen: set[int] = set()
    rows = []
    for day in range(args.days):
        users, times, amount, merchant = _day(rng, day, args)
        seen.update(np.unique(users).tolist())
        for lo in range(0, len(users), args.batch):
            part = slice(lo, lo + args.batch)
            for name, state in states.items():  # interleaved: the same machine state
                t0 = time.perf_counter()
                state.update(users[part], times[part], amount[part], merchant[part])
                spent[name] += time.perf_counter() - t0
        e, n = states["expiry"], states["none"]
        rows.append([day + 1, f"{len(seen):,}", f"{e.n_entities:,}", f"{e.nbytes / MIB:,.0f}",
                     f"{n.n_entities:,}", f"{n.nbytes / MIB:,.0f}"])  # fmt: skip
    heads = ["day", "users seen", "held (expiry)", "MiB (expiry)", "held (none)", "MiB (none)"]
    table(rows, heads)
    total = args.days * args.events_per_day
    rate = {name: total / s for name, s in spent.items()}
    ratio = rate["expiry"] / rate["none"]
    print(f"  update rate: expiry {rate['expiry']:,.0f} events/s, none {rate['none']:,.0f} "
          f"events/s ({ratio:.2f} x); dropped {states['expiry'].purged:,}")  # fmt: skip
    last = len(rows) - 1
    half = last // 2
    e_last, e_half = states["expiry"].n_entities, int(rows[half][2].replace(",", ""))
    print(
        f"  held (expiry) day {half + 1} -> day {last + 1}: {e_half:,} -> {e_last:,}; "
        f"(none) {rows[half][4]} -> {rows[last][4]}"
    )
    return {
        "held_expiry": float(e_last),
        "held_none": float(states["none"].n_entities),
        "rate_ratio": rate["expiry"] / rate["none"],
    }


if __name__ == "__main__":
    main()
