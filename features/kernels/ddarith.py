"""Double-double (~106-bit) arithmetic for the running window sums of promoted entities.

A value is a pair ``(hi, lo)`` of float64 with ``hi == fl(hi + lo)``; error-free
transformations (Knuth's two-sum, Dekker's product, no FMA needed) keep the rounding error
of every step. The running sums add every row once and subtract it once: in float64 a 1e9
row would leave ~1e2 of residue in a sum of squares, at ~106 bits ~1e-14
(tests/features/test_ddarith.py checks each function against exact rationals).
"""

from __future__ import annotations

import numpy as np
from numba import njit

SPLITTER = 134217729.0  # 2**27 + 1: Dekker split of a float64 into two 26-bit halves


@njit(cache=True)
def two_sum(a: float, b: float) -> tuple[float, float]:
    """s + e == a + b exactly (Knuth), s = fl(a + b)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@njit(cache=True)
def two_prod(a: float, b: float) -> tuple[float, float]:
    """p + e == a * b exactly (Dekker; no FMA needed), p = fl(a * b)."""
    p = a * b
    c = SPLITTER * a
    ah = c - (c - a)
    al = a - ah
    c = SPLITTER * b
    bh = c - (c - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@njit(cache=True)
def dd_add(hi: float, lo: float, bh: float, bl: float) -> tuple[float, float]:
    """(hi, lo) + (bh, bl) in double-double, renormalized so that hi == fl(hi + lo).

    Running window sums add and subtract every row once. In plain float64 a 1e9 row (x*x =
    1e18) leaves ~1e2 of rounding in the sum of squares after it left, far more than the
    variance of the small rows that follow (pandas' online variance is off by up to ~7 on
    the hot-user test); at ~106 bits the residue is ~1e-14
    (test_kernels::test_hot_user_matches_pandas, test_ddarith::test_dd_add_is_exact).
    """
    s, e = two_sum(hi, bh)
    t, f = two_sum(lo, bl)
    s, e = two_sum(s, e + t)
    return two_sum(s, e + f)


@njit(cache=True, inline="always")
def acc_add(cf: np.ndarray, c: int, sq: bool, x: float) -> None:
    """Add x (and x*x, split exactly) to the double-double sums at cf[c:c+2] (cf[c+2:c+4])."""
    cf[c], cf[c + 1] = dd_add(cf[c], cf[c + 1], x, 0.0)
    if sq:
        p, q = two_prod(x, x)
        cf[c + 2], cf[c + 3] = dd_add(cf[c + 2], cf[c + 3], p, q)


@njit(cache=True, inline="always")
def acc_sub(cf: np.ndarray, c: int, sq: bool, x: float) -> None:
    """Subtract x (and x*x) from the sums at cf[c:c+4]: the exact inverse of :func:`acc_add`
    up to the renormalization (test_ddarith::test_running_sums_leave_no_residue)."""
    cf[c], cf[c + 1] = dd_add(cf[c], cf[c + 1], -x, 0.0)
    if sq:
        p, q = two_prod(x, x)
        cf[c + 2], cf[c + 3] = dd_add(cf[c + 2], cf[c + 3], -p, -q)


@njit(cache=True)
def acc_fill(cf: np.ndarray, c: int, sq: bool, arena_a: np.ndarray, lo: int, hi: int) -> None:
    """Sums over arena_a[lo:hi] from exact zeros (rebuild, reset)."""
    cf[c] = 0.0
    cf[c + 1] = 0.0
    if sq:
        cf[c + 2] = 0.0
        cf[c + 3] = 0.0
    for j in range(lo, hi):
        acc_add(cf, c, sq, arena_a[j])


@njit(cache=True)
def dd_std(sh: float, sl: float, qh: float, ql: float, n: int) -> float:
    """Population std from double-double Sx = sh + sl, Sxx = qh + ql over n rows.

    n*Sxx - Sx**2 is formed in double-double: the cancellation that ruins the textbook
    one-pass formula costs nothing at ~106 bits, and rows that left the window leave no
    residue beyond ~2**-106 of the largest sum seen (test_kernels::
    test_hot_user_matches_pandas: nearly-constant windows right after 1e9 spikes;
    test_ddarith::test_dd_std_survives_cancellation).
    """
    fn = float(n)
    ah, al = two_prod(qh, fn)
    bh, bl = two_prod(sh, sh)
    dh, _ = dd_add(ah, al + ql * fn, -bh, -(bl + 2.0 * sh * sl))
    v = dh / fn / fn
    if v > 0.0:
        return np.sqrt(v)
    # rounding can leave a tiny negative variance: 0.0; NaN (inf sums) stays NaN so the
    # caller falls back to two passes (test_kernels::test_huge_amount_does_not_poison_sums)
    return 0.0 if v <= 0.0 else v
