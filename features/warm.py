"""Compile every Numba kernel once, so no user's first command waits for it.

The kernels are compiled with ``cache=True``: Numba writes the machine code next to the
sources and later processes load it in well under a second instead of compiling for
~25 s. ``make install`` runs ``python -m features.warm``, so a fresh install is warm and
the first ``featflow backfill`` or worker starts at once. Benchmarks call :func:`warm`
before timing anything.

A plain small update would miss paths only large runs reach (arena growth and compaction,
long windows, eviction, promotion of a busy user, out-of-order rows, restore): a tiny
initial arena and one very busy user over two days, with some disorder and some copies of
events (duplicate detection), reach them.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from features.online_codec import RedisHsetPacker
from features.spec import DEFAULT_FEATURES
from features.state import WindowState, event_keys
from infra.partitioner import partition_of


def warm() -> float:
    """Run every kernel entry point once on a small synthetic stream; returns seconds."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    n = 6000
    users = np.where(rng.random(n) < 0.5, 1, rng.integers(2, 300, size=n)).astype(np.int64)
    times = 1_767_225_600_000 + np.sort(rng.integers(0, 2 * 86_400_000, size=n))
    late = rng.random(n) < 0.05  # out of order by up to 30 s: the late paths
    times = np.where(late, times - rng.integers(0, 30_000, size=n), times)
    amounts = np.round(rng.lognormal(3.0, 1.0, size=n), 2)
    merchants = rng.integers(1, 50, size=n).astype(np.int64)
    keys = event_keys(users, pa.array([f"e{i % (n - 500)}" for i in range(n)]))  # copies
    state = WindowState(DEFAULT_FEATURES, initial_entities=1, initial_arena=8)
    for lo in range(0, n, 1000):
        hi = lo + 1000
        result = state.update(
            users[lo:hi], times[lo:hi], amounts[lo:hi], merchants[lo:hi], keys[lo:hi]
        )
    state.compact()
    state.sweep_ids()
    restored = WindowState.restore(state.snapshot(), DEFAULT_FEATURES)
    restored.update(users[:10], times[-10:], amounts[:10], merchants[:10], keys[:10])
    names = [s.name.encode() for s in DEFAULT_FEATURES]
    packer = RedisHsetPacker(DEFAULT_FEATURES, names, b"event_timestamp", b"warm")
    packer.pack(users[-1000:], times[-1000:], np.nan_to_num(result.features))
    partition_of(users[:10], 8)  # a backfill's partition clocks
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"Numba kernels ready in {warm():.1f} s (compiled or loaded from the cache)")
