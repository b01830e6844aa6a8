"""Entities split into shards of near-equal rows, so a batch runs on several cores.

Window features are per entity, so a batch split by entity, each part run by its own
:class:`~features.state.WindowState` in its own thread (the kernels release the GIL), gives
the same rows as one state: the backfill uses this to use every core.

Real activity is skewed (in a Zipf(1.5) population one user holds a third of the rows), so
shards are not dealt by ``hash % k``. Users are hashed into 4,096 buckets (a multiplicative
hash, no sort: 1M rows in ~20 ms where ``np.unique`` takes 0.2 s); buckets holding more
than ``1 / (4 k)`` of the rows go to the least-loaded shard, largest first, and the rest
fill the shards in turn up to a common level (water-filling), so a shard exceeds the ideal
share by at most one small bucket, or holds a single bucket alone where that bucket (the
busiest user's) exceeds a share by itself: no split of entities can do better than that.
"""

from __future__ import annotations

import numpy as np

MIN_ROWS_PER_SHARD = 20_000  # below this a thread costs more than it saves
_BUCKET_BITS = 12
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads sequential ids


def bucket_of(user_id: np.ndarray) -> np.ndarray:
    """The bucket (0..4095) of each user id; equal ids share a bucket."""
    mixed = user_id.astype(np.uint64, copy=False) * _GOLDEN  # wraps modulo 2**64
    return (mixed >> np.uint64(64 - _BUCKET_BITS)).astype(np.intp)


def balanced_shards(
    user_id: np.ndarray, shards: int, *, min_rows: int = MIN_ROWS_PER_SHARD
) -> list[np.ndarray]:
    """Row indices (ascending) of each shard; every user's rows in exactly one shard.

    At most ``shards`` shards, fewer where a shard would hold fewer than ``min_rows`` rows.

    >>> users = np.r_[np.full(6, 7), np.arange(100, 106)]
    >>> [len(p) for p in balanced_shards(users, 2, min_rows=1)]
    [6, 6]
    """
    n = len(user_id)
    k = max(1, min(shards, n // max(min_rows, 1)))
    if k == 1:
        return [np.arange(n, dtype=np.int64)]
    bucket = bucket_of(user_id)
    counts = np.bincount(bucket, minlength=1 << _BUCKET_BITS)
    by_size = np.argsort(-counts, kind="stable")
    owner = np.empty(len(counts), dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    n_heavy = int(np.count_nonzero(counts * 4 * k > n))
    for b in by_size[:n_heavy].tolist():
        s = int(np.argmin(load))
        owner[b] = s
        load[s] += counts[b]
    rest = by_size[n_heavy:]
    room = np.maximum(_water_level(load, n - int(load.sum())) - load, 0.0)
    starts = np.cumsum(counts[rest]) - counts[rest]  # where each bucket's rows begin
    owner[rest] = np.minimum(np.searchsorted(np.cumsum(room), starts, side="right"), k - 1)
    row_owner = owner[bucket]
    return [np.flatnonzero(row_owner == s) for s in range(k)]


def _water_level(load: np.ndarray, rest: int) -> float:
    """The level ``L`` with ``sum(max(L - load, 0)) == rest``: the shards below it are
    filled to it, those above it get nothing more."""
    low = np.sort(load)
    for m in range(len(low), 0, -1):  # the m least-loaded shards take the rest
        level = (rest + float(low[:m].sum())) / m
        if level >= low[m - 1]:
            return level
    return float(low[0] + rest)
