"""Window-state memory at scale: 1M active users x 20 events per user per day.

The 24 h windows (plus allowed lateness) mean a day of events is all retained history, so a
single :class:`features.state.WindowState` fed one day of events in time order holds its
worst-case steady-state size. Users are drawn uniformly (not Zipf) on purpose: every user is
active and holds ~20 rows, the case the target is about; a skewed draw leaves most users
with few rows and needs less memory.

Measured: process RSS (psutil) before the state exists (after numba JIT warm-up) and after
the last batch (garbage collected); the state's own ``nbytes`` estimate; the snapshot
(checkpoint) size and the RSS while that snapshot is held; and update throughput.

    python -m benchmarks.state_memory [--users 1000000] [--events-per-user 20] [--batch 100000]
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import numpy as np

from benchmarks._common import header, rss_bytes, table, verdict, warm_up_kernels
from features.spec import DAY_MS, DEFAULT_FEATURES, DEFAULT_LATENESS_MS
from features.state import WindowState

TARGET_BYTES = 2 * 1024**3
START_MS = 1_767_225_600_000
MIB = 1024**2


def _batch(
    rng: np.random.Generator, size: int, users: int, t_lo: int, t_hi: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``size`` events of uniformly drawn users with sorted times in [t_lo, t_hi)."""
    user = rng.integers(1, users + 1, size=size, dtype=np.int64)
    times = np.sort(rng.integers(t_lo, max(t_hi, t_lo + 1), size=size, dtype=np.int64))
    amount = np.round(rng.lognormal(3.0, 1.0, size=size), 2)
    merchant = rng.integers(1, 10_001, size=size, dtype=np.int64)
    return user, times, amount, merchant


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events-per-user", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = args.users * args.events_per_user
    batches = max(1, -(-n // args.batch))
    header(
        "state_memory: one WindowState holding a day of events",
        (__doc__ or "").split("\n\n")[1]
        + "\n"
        + (__doc__ or "").split("\n\n")[2]
        + f"\nsizes: {args.users:,} users x {args.events_per_user} events/day = {n:,} events over"
        f" 24 h, {batches} batches of {args.batch:,}, {len(DEFAULT_FEATURES)} default features",
    )
    rng = np.random.default_rng(args.seed)

    # JIT warm-up and allocator settling before the baseline.
    warm_up_kernels()
    gc.collect()
    rss0 = rss_bytes()

    state = WindowState(DEFAULT_FEATURES, lateness_ms=DEFAULT_LATENESS_MS)
    update_s = 0.0
    peak_during = rss0
    for b in range(batches):
        size = min(args.batch, n - b * args.batch)
        t_lo = START_MS + b * DAY_MS // batches
        t_hi = START_MS + (b + 1) * DAY_MS // batches
        cols = _batch(rng, size, args.users, t_lo, t_hi)
        start = time.perf_counter()
        state.update(*cols)
        update_s += time.perf_counter() - start
        peak_during = max(peak_during, rss_bytes())
    gc.collect()
    rss1 = rss_bytes()
    peak_update = _peak_rss_bytes()  # true peak, incl. arena growth copies inside update()

    start = time.perf_counter()
    captured = state.capture()  # the worker does this between fetches ...
    capture_s = time.perf_counter() - start
    snap = captured.encode()  # ... and this in a thread
    snapshot_s = time.perf_counter() - start
    del captured
    gc.collect()
    rss_snap = rss_bytes()
    snap_bytes = len(snap)
    del snap
    gc.collect()

    delta = rss1 - rss0
    table(
        [
            ("users in state", state.n_entities),
            ("retained history rows", state.n_live_rows),
            ("RSS before state (after JIT warm-up), MiB", rss0 / MIB),
            ("RSS after all batches, MiB", rss1 / MIB),
            ("RSS delta (the state), MiB", delta / MIB),
            ("RSS delta, highest seen between batches, MiB", (peak_during - rss0) / MIB),
            ("peak RSS delta while updating (ru_maxrss), MiB", (peak_update - rss0) / MIB),
            ("WindowState.nbytes (estimate), MiB", state.nbytes / MIB),
            ("bytes per user (RSS delta)", delta / max(state.n_entities, 1)),
            ("snapshot (checkpoint) size, MiB", snap_bytes / MIB),
            ("RSS delta while holding the snapshot, MiB", (rss_snap - rss0) / MIB),
            ("peak RSS delta incl. snapshot (ru_maxrss), MiB", (_peak_rss_bytes() - rss0) / MIB),
            ("update throughput, events/s", n / update_s),
            ("snapshot time (capture + encode), s", snapshot_s),
            ("  of which capture (copy, in the worker's loop), s", capture_s),
        ],
        ["figure", "value"],
    )
    print()
    gib = 1024**3
    verdict("state RSS delta (GiB)", delta / gib, TARGET_BYTES / gib, higher_is_better=False)
    return {
        "rss_delta_bytes": float(delta),
        "nbytes": float(state.nbytes),
        "snapshot_bytes": float(snap_bytes),
    }


if __name__ == "__main__":
    main()
