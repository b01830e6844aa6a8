"""Scan path: features of a row computed from its window's rows.

Entities holding at most ``Tuning.promote_above`` rows (almost all of them) take this path:
the window's rows are scanned (two-pass std, plain sums). For a handful of rows this beats
any incremental bookkeeping, and it touches no state beyond the rows themselves. The late
path (:mod:`features.kernels.late`) falls back to it for windows too costly to derive.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from features.kernels.layout import (
    COUNT,
    COUNT_SAME,
    DISTINCT,
    EVICTED,
    EWM_MEAN,
    FIRST,
    LAST,
    MAX,
    MIN,
    NO_TIME,
    QUANTILE,
    SINCE_LAST,
    STD,
    SUM,
)
from features.kernels.quantile import scan_quantile

DISTINCT_NAIVE_MAX = 32  # below this an O(k^2) scan beats copying + sorting


@njit(cache=True, inline="always")
def first_after(arena_t: np.ndarray, a: int, b: int, bound: int) -> int:
    """First index in [a, b) whose time is > bound (b if none; times sorted)."""
    while a < b:
        mid = (a + b) >> 1
        if arena_t[mid] > bound:
            b = mid
        else:
            a = mid + 1
    return a


@njit(cache=True)
def two_pass_std(arena_a: np.ndarray, lo: int, hi: int) -> float:
    """Two-pass population std of arena_a[lo:hi]: no cancellation, exactly 0.0 for one row
    (test_kernels::test_single_event, test_in_order_matches_pandas)."""
    s = 0.0
    for j in range(lo, hi):
        s += arena_a[j]
    m = s / (hi - lo)
    ss = 0.0
    for j in range(lo, hi):
        dv = arena_a[j] - m
        ss += dv * dv
    return np.sqrt(ss / (hi - lo))


@njit(cache=True)
def distinct_count(arena_m: np.ndarray, lo: int, hi: int, scratch: np.ndarray) -> int:
    """Distinct values in arena_m[lo:hi+1]; scratch must hold hi - lo + 1 items if large."""
    k = hi - lo + 1
    if k <= DISTINCT_NAIVE_MAX:
        n = 0
        for j in range(lo, hi + 1):
            v = arena_m[j]
            seen = False
            for q in range(lo, j):
                if arena_m[q] == v:
                    seen = True
                    break
            if not seen:
                n += 1
        return n
    buf = scratch[:k]
    buf[:] = arena_m[lo : hi + 1]
    buf.sort()
    n = 1
    for j in range(1, k):
        if buf[j] != buf[j - 1]:
            n += 1
    return n


@njit(cache=True, inline="always")
def scan_value(
    code: int,
    param: int,
    arena_a: np.ndarray,
    arena_m: np.ndarray,
    lo: int,
    pos: int,
    scratch: np.ndarray,
) -> tuple[float, np.ndarray]:
    """One windowed feature (not count) of arena rows [lo, pos] (the row itself at ``pos``)
    by scanning them; returns it and the (possibly regrown) scratch buffer."""
    cnt = pos - lo + 1
    if code == FIRST:
        return arena_a[lo], scratch
    if code == QUANTILE:
        return scan_quantile(arena_a, lo, pos + 1, param, scratch)
    if code == COUNT_SAME:
        mm = arena_m[pos]
        same = 0
        for j in range(lo, pos + 1):
            if arena_m[j] == mm:
                same += 1
        return float(same), scratch
    if code == DISTINCT:
        if cnt > scratch.shape[0]:
            scratch = np.empty(2 * cnt, dtype=np.int64)
        return float(distinct_count(arena_m, lo, pos, scratch)), scratch
    if code in (MAX, MIN):
        best = arena_a[lo]
        for j in range(lo + 1, pos + 1):
            v = arena_a[j]
            if (code == MAX and v > best) or (code == MIN and v < best):
                best = v
        return best, scratch
    if code == STD:
        return two_pass_std(arena_a, lo, pos + 1), scratch
    # plain left-to-right sum of a few rows (test_kernels::test_in_order_matches_pandas)
    s = 0.0
    for j in range(lo, pos + 1):
        s += arena_a[j]
    return (s if code == SUM else s / cnt), scratch


@njit(cache=True, inline="always")
def unwindowed(
    code: int,
    q: int,
    param: int,
    e: int,
    ti: int,
    pos: int,
    first: int,
    arena_t: np.ndarray,
    arena_a: np.ndarray,
    arena_m: np.ndarray,
    seg: np.ndarray,
    ewm: np.ndarray,
) -> float:
    """``since_last``, ``ewm_mean`` (ewm slot ``q``) or ``last`` (``param`` 1: the
    merchant) of the row at ``pos``: the same on every path, since none reads a window (the
    driver module states all three)."""
    if code == LAST:
        return float(arena_m[pos]) if param else arena_a[pos]
    if code == SINCE_LAST:
        prev = arena_t[pos - 1] if pos > first else seg[e, EVICTED]
        return -1.0 if prev == NO_TIME else (ti - prev) / 1000.0
    return ewm[e, 2 * q] / ewm[e, 2 * q + 1]


@njit(cache=True, inline="always")
def scan_features(
    i: int,
    e: int,
    ti: int,
    first: int,
    pos: int,
    agg: np.ndarray,
    win_id: np.ndarray,
    uwin: np.ndarray,
    slot: np.ndarray,
    param: np.ndarray,
    seg: np.ndarray,
    ewm: np.ndarray,
    arena_t: np.ndarray,
    arena_a: np.ndarray,
    arena_m: np.ndarray,
    lo_cache: np.ndarray,
    scratch: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Features of the row at ``pos`` (entity ``e``'s rows start at ``first``) by scanning
    its window rows [lo, pos] into ``out[i]``; returns the (possibly regrown) scratch.

    Takes the arrays, not the argument tuples: it is inlined into the per-event loop, where
    binding a tuple's fields costs a reference-count pair per field per event (uniform
    activity, all rows on this path: -25% events/s, benchmarks/kernel_disorder.py).
    """
    for u in range(uwin.shape[0]):
        lo_cache[u] = -1
    for f in range(agg.shape[0]):
        code = agg[f]
        if code in (SINCE_LAST, EWM_MEAN, LAST):
            out[i, f] = unwindowed(
                code, slot[f], param[f], e, ti, pos, first, arena_t, arena_a, arena_m, seg, ewm
            )
            continue
        u = win_id[f]
        lo = lo_cache[u]
        if lo < 0:
            # first row with time > ti - w (a row at exactly ti - w is excluded;
            # test_kernels::test_window_boundary)
            lo = first_after(arena_t, first, pos, ti - uwin[u])
            lo_cache[u] = lo
        if code == COUNT:
            out[i, f] = float(pos - lo + 1)
        else:
            out[i, f], scratch = scan_value(code, param[f], arena_a, arena_m, lo, pos, scratch)
    return scratch
