"""Sliding-window quantiles: the value at a rank, on log-spaced buckets.

Definition (every path, so stream, backfill and request time agree bit for bit): the
``p``-th percentile of a window of ``n`` amounts is the nearest-rank order statistic, the
``k``-th smallest amount with ``k = ceil(p * n / 100)``, reported as the representative of
its bucket. Buckets: ``[0, Q_MIN)`` reads 0.0; bucket ``i >= 1`` holds
``[Q_MIN * g**(i-1), Q_MIN * g**i)`` with ``g = (Q_MAX / Q_MIN) ** (1 / (QB - 1))`` and reads
``Q_MIN * g**(i-1) * 2g / (1 + g)``. So for a true percentile ``q`` in ``[Q_MIN, Q_MAX]`` the
feature is within ``Q_REL_ERROR = (g - 1) / (g + 1)`` (1.6 %) of ``q`` relatively, below
``Q_MIN`` within ``Q_MIN`` absolutely, and above ``Q_MAX`` (only if ``max_amount`` was raised
past it) it reads ``Q_MAX``'s bucket. DDSketch's bound, with counts that are exact integers:
the bucket of the k-th smallest value is the k-th smallest bucket, so the scan path (sort a
few rows' buckets) and the incremental path (a Fenwick tree of bucket counts per window,
O(log QB) per row in, out and query) give the same bucket; no sketch merge error and nothing
that drifts as rows come and go.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from features.kernels.layout import QB

Q_MIN = 0.01  # a cent: smaller amounts read as 0.0
Q_MAX = 1e12  # infra.events.EventRules.max_amount's default
_LOG_MIN = math.log(Q_MIN)
_LOG_G = (math.log(Q_MAX) - _LOG_MIN) / (QB - 1)
_G = math.exp(_LOG_G)
Q_REL_ERROR = (_G - 1.0) / (_G + 1.0)
_REP = 2.0 * _G / (1.0 + _G)


@njit(cache=True, inline="always")
def bucket(x: float) -> int:
    """The bucket of amount ``x`` (monotone non-decreasing in ``x``)."""
    if x < Q_MIN:
        return 0
    b = 1 + int(math.floor((math.log(x) - _LOG_MIN) / _LOG_G))  # noqa: RUF046 (numba)
    return min(b, QB - 1)


@njit(cache=True, inline="always")
def representative(b: int) -> float:
    """The value a quantile in bucket ``b`` reads as."""
    if b == 0:
        return 0.0
    return math.exp(_LOG_MIN + (b - 1) * _LOG_G) * _REP


@njit(cache=True, inline="always")
def rank(percentile: int, n: int) -> int:
    """1-based nearest rank ``ceil(percentile * n / 100)`` in integers (no float edge)."""
    return max(1, (percentile * n + 99) // 100)


@njit(cache=True, inline="always")
def fen_add(ci: np.ndarray, base: int, b: int, d: int) -> None:
    """Add ``d`` to bucket ``b`` of the Fenwick tree at ``ci[base : base + QB]``."""
    i = b + 1
    while i <= QB:
        ci[base + i - 1] += d
        i += i & -i


@njit(cache=True, inline="always")
def fen_find(ci: np.ndarray, base: int, k: int) -> int:
    """The smallest bucket whose cumulative count reaches ``k`` (1 <= k <= total)."""
    pos = 0
    step = QB
    while step > 0:
        nxt = pos + step
        if nxt <= QB and ci[base + nxt - 1] < k:
            pos = nxt
            k -= ci[base + nxt - 1]
        step >>= 1
    return pos


@njit(cache=True)
def scan_quantile(
    arena_a: np.ndarray, lo: int, hi: int, percentile: int, scratch: np.ndarray
) -> tuple[float, np.ndarray]:
    """The quantile of ``arena_a[lo:hi]`` by sorting the rows' buckets; returns it and the
    (possibly regrown) int64 scratch buffer."""
    n = hi - lo
    if n > scratch.shape[0]:
        scratch = np.empty(2 * n, dtype=np.int64)
    buf = scratch[:n]
    for j in range(n):
        buf[j] = bucket(arena_a[lo + j])
    buf.sort()
    return representative(buf[rank(percentile, n) - 1]), scratch
