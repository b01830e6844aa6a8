"""Double-double arithmetic (features/kernels/ddarith.py) against exact rationals.

Every float64 is a rational, so ``fractions.Fraction`` is an exact oracle: the error-free
transformations must be exact, sums ~106-bit accurate, and the running window sums must
survive the cancellations that ruin plain float64 (a 1e9 row leaving a window of small rows).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.kernels.ddarith import acc_add, acc_fill, acc_sub, dd_add, dd_std, two_prod, two_sum

DD_EPS = Fraction(1, 2**104)  # a few ulps of a ~106-bit double-double

finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False)
# Dekker's split needs |x| well below overflow, and an exact error term needs a product
# far above the subnormals
moderate = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-140, max_value=1e140).flatmap(lambda x: st.sampled_from([x, -x])),
)


def F(x: float) -> Fraction:
    return Fraction(x)


def dd(x: Fraction) -> tuple[float, float]:
    """The double-double nearest an exact value."""
    hi = float(x)
    return hi, float(x - F(hi))


def assert_dd_close(hi: float, lo: float, exact: Fraction, scale: Fraction) -> None:
    """hi + lo within a few 2**-106 of ``scale`` of the exact value, and renormalized."""
    assert hi == hi + lo  # hi == fl(hi + lo)
    assert abs(F(hi) + F(lo) - exact) <= DD_EPS * scale, (hi, lo, float(exact))


@settings(deadline=None)  # the first example compiles the kernel
@given(finite, finite)
def test_two_sum_is_exact(a: float, b: float) -> None:
    s, e = two_sum(a, b)
    assert s == a + b
    assert F(s) + F(e) == F(a) + F(b)


@settings(deadline=None)  # the first example compiles the kernel
@given(moderate, moderate)
def test_two_prod_is_exact(a: float, b: float) -> None:
    p, e = two_prod(a, b)
    assert p == a * b
    assert F(p) + F(e) == F(a) * F(b)


@settings(deadline=None)  # the first example compiles the kernel
@given(moderate, moderate, moderate, moderate)
def test_dd_add_is_exact(a: float, b: float, c: float, d: float) -> None:
    """(a, b) + (c, d) for double-doubles made exact from pairs of floats, cancelling ones
    included (c = -a): within a few 2**-106 of the exact sum's magnitude."""
    x, y = dd(F(a) + F(b) * DD_EPS), dd(F(c) + F(d) * DD_EPS)
    for xh, xl, yh, yl in ((*x, *y), (*x, -x[0], -x[1] + y[1])):
        hi, lo = dd_add(xh, xl, yh, yl)
        exact = F(xh) + F(xl) + F(yh) + F(yl)
        assert_dd_close(hi, lo, exact, abs(exact))


def test_dd_add_cancels_exactly() -> None:
    """x + y - x leaves y exactly where float64 leaves nothing of it (1e16 + 1 - 1e16)."""
    hi, lo = dd_add(1e16, 0.0, 1.0, 0.0)
    hi, lo = dd_add(hi, lo, -1e16, 0.0)
    assert (hi, lo) == (1.0, 0.0)
    assert 1e16 + 1.0 - 1e16 != 1.0  # what the double-double saves


def _running_sums(rows: list[float], leave: int) -> np.ndarray:
    """Sums of x and x*x after adding every row and subtracting the first ``leave``."""
    cf = np.zeros(4)
    for x in rows:
        acc_add(cf, 0, True, x)
    for x in rows[:leave]:
        acc_sub(cf, 0, True, x)
    return cf


@pytest.mark.parametrize("spike", [1e9, 1e15, -3e12])
def test_running_sums_leave_no_residue(spike: float) -> None:
    """A spike enters and leaves a window of small rows: the sums of the rows left are
    within a few 2**-106 of the spike per operation, i.e. exact to far below the small
    rows' variance (test_kernels::test_hot_user_matches_pandas needs this for std)."""
    rng = np.random.default_rng(0)
    small = np.round(rng.lognormal(0.0, 0.5, 300), 2).tolist()
    rows = [spike, *small]
    cf = _running_sums(rows, leave=1)
    sx = sum(map(F, small))
    sxx = sum(F(x) * F(x) for x in small)
    ops = len(rows) + 1
    assert_dd_close(cf[0], cf[1], sx, ops * abs(F(spike)))
    assert_dd_close(cf[2], cf[3], sxx, ops * F(spike) * F(spike))
    # what plain float64 leaves of the sum of squares: off by more than 0.1%
    naive = 0.0
    for x in rows:
        naive += x * x
    naive -= spike * spike
    assert abs(F(naive) - sxx) > sxx / 1000


def test_acc_fill_matches_fsum() -> None:
    a = np.array([1e9, 0.1, -1e9, 0.2, 3.0, 1e-7] * 50)
    cf = np.zeros(4)
    acc_fill(cf, 0, True, a, 0, a.shape[0])
    assert cf[0] == math.fsum(a)  # the correctly rounded sum
    assert cf[2] == float(sum(F(x) * F(x) for x in a))
    acc_fill(cf, 0, True, a, 3, 3)  # an empty range: exact zeros
    assert cf.tolist() == [0.0] * 4


@pytest.mark.parametrize(
    ("offset", "step"),
    [(1e8, 1e-3), (1e9, 0.01), (-5e7, 1e-4), (0.0, 1.0), (123_456.78, 0.01)],
)
def test_dd_std_survives_cancellation(offset: float, step: float) -> None:
    """Nearly constant rows far from zero: n*Sxx - Sx**2 cancels all but ~1e-22 of Sxx,
    which the textbook one-pass formula in float64 cannot survive; in double-double the
    population std matches the exact one."""
    xs = [offset + step * k for k in (0, 1, 1, 2, 3, 5, 8, 13, 0, 2)]
    n = len(xs)
    sx = sum(map(F, xs))
    sxx = sum(F(x) * F(x) for x in xs)
    exact_var = (n * sxx - sx * sx) / (n * n)
    got = dd_std(*dd(sx), *dd(sxx), n)
    assert got == pytest.approx(math.sqrt(exact_var), rel=1e-9)
    if offset:
        fsx, fsxx = float(sx), float(sxx)
        textbook = (n * fsxx - fsx * fsx) / (n * n)
        assert abs(textbook - float(exact_var)) > 1e-3 * float(exact_var)


def test_dd_std_edge_cases() -> None:
    assert dd_std(5.0, 0.0, 25.0, 0.0, 1) == 0.0  # one row
    assert dd_std(4.0, 0.0, 8.0 - 1e-15, 0.0, 2) == 0.0  # rounding below zero: 0.0
    assert math.isnan(dd_std(math.inf, 0.0, math.inf, 0.0, 2))  # the caller rescans
