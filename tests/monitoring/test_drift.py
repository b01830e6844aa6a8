"""Drift metrics against scipy and the formulas on the same bins; the window against a
recount from the raw values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from inference.train import HIST_BINS, histogram
from monitoring.drift import PSI_FLOOR, DriftWindow, Reference, drift, psi_band

TOL = 1e-9


def _psi_formula(p: np.ndarray, q: np.ndarray) -> float:
    total = 0.0
    for a, b in zip(p, q, strict=True):
        a, b = max(a, PSI_FLOOR), max(b, PSI_FLOOR)
        total += (b - a) * np.log(b / a)
    return total


def _check(ref: Reference, live_values: np.ndarray) -> None:
    live = np.bincount(ref.bin_of(live_values), minlength=ref.n_bins)
    got = drift(ref.shares(), live)
    p = ref.shares()
    q = live / live.sum()
    ref_sample = np.repeat(np.arange(ref.n_bins), np.r_[0, ref.counts.astype(int), 0])
    live_sample = ref.bin_of(live_values)
    assert got["ks"] == pytest.approx(ks_2samp(ref_sample, live_sample).statistic, abs=TOL)
    assert got["js"] == pytest.approx(jensenshannon(p, q, base=2), abs=TOL)
    assert got["psi"] == pytest.approx(_psi_formula(p, q), abs=TOL)


@pytest.mark.parametrize(
    "shift",
    ["none", "covariate shift", "scale", "beyond the edges", "one value", "heavy tail"],
)
def test_metrics_against_scipy(shift: str) -> None:
    rng = np.random.default_rng(11)
    train = rng.lognormal(3.0, 1.0, 20_000)
    ref = Reference.of(histogram(train))
    live = {
        "none": rng.lognormal(3.0, 1.0, 5000),
        "covariate shift": rng.lognormal(3.6, 1.0, 5000),
        "scale": rng.lognormal(3.0, 2.0, 5000),
        "beyond the edges": np.r_[
            rng.lognormal(3.0, 1.0, 4000), np.full(500, -1.0), np.full(500, 1e9)
        ],
        "one value": np.full(5000, float(np.median(train))),
        "heavy tail": rng.pareto(1.2, 5000) * 20,
    }[shift]
    _check(ref, live)
    got = drift(ref.shares(), np.bincount(ref.bin_of(live), minlength=ref.n_bins))
    if shift == "none":
        assert psi_band(got["psi"]) == "stable" and got["ks"] < 0.05
    if shift in ("covariate shift", "beyond the edges"):
        assert psi_band(got["psi"]) == "significant"


def _skewed(rng: np.random.Generator, n: int, busy: tuple[float, float], mu: float) -> np.ndarray:
    """Rows of a skewed stream: a sixth from one busy entity whose value (the largest of
    all, like its 24 h count) jitters within ``busy``, the rest lognormal around ``mu``."""
    mine = rng.random(n) < 1 / 6
    return np.where(mine, rng.uniform(*busy, n), rng.lognormal(mu, 1.0, n))


def test_a_busy_entity_jittering_is_not_drift_and_a_shift_still_is() -> None:
    rng = np.random.default_rng(3)
    train = _skewed(rng, 20_000, (4000.0, 4040.0), 3.0)
    stable = _skewed(rng, 5000, (4050.0, 4100.0), 3.0)  # the busy one grew 1-2 %
    shifted = _skewed(rng, 5000, (4050.0, 4100.0), 3.6)  # everyone else spends 1.8x
    deciles = np.unique(np.quantile(train, np.linspace(0, 1, HIST_BINS + 1)))
    plain = Reference.of(histogram(train, deciles))
    robust = Reference.of(histogram(train))

    def psi(ref: Reference, live: np.ndarray) -> float:
        return drift(ref.shares(), np.bincount(ref.bin_of(live), minlength=ref.n_bins))["psi"]

    assert psi_band(psi(plain, stable)) == "significant"  # the defect the edges avoid
    assert psi_band(psi(robust, stable)) == "stable"
    assert psi_band(psi(robust, shifted)) == "significant"
    _check(robust, stable)
    _check(robust, shifted)


def test_bins_follow_numpy_histogram_and_edges() -> None:
    ref = Reference.of({"edges": [0.0, 1.0, 2.0, 4.0], "counts": [1, 1, 1]})
    values = np.array([-0.1, 0.0, 0.5, 1.0, 3.99, 4.0, 4.0001, np.nan])
    assert ref.bin_of(values).tolist() == [0, 1, 1, 2, 3, 3, 4, 4]
    inside = values[(values >= 0) & (values <= 4)]
    counts, _ = np.histogram(inside, bins=ref.edges)
    assert np.bincount(ref.bin_of(inside), minlength=5)[1:4].tolist() == counts.tolist()


def test_the_window_equals_a_recount_of_its_last_values() -> None:
    rng = np.random.default_rng(5)
    train = {"a": rng.normal(0, 1, 10_000), "b": rng.exponential(2.0, 10_000)}
    refs = {k: Reference.of(histogram(v)) for k, v in train.items()}
    refs["score"] = Reference.of(histogram(rng.random(10_000), np.linspace(0, 1, 21)))
    n = 23_456
    stream = {
        "a": np.r_[rng.normal(0, 1, n // 2), rng.normal(1.5, 1, n - n // 2)],  # shifts midway
        "b": rng.exponential(2.0, n),
        "score": rng.random(n),
    }
    w = DriftWindow(refs, size=5000)
    lo = 0
    while lo < n:
        size = int(rng.integers(1, 1200))
        w.add_many({k: v[lo : lo + size] for k, v in stream.items()})
        lo = min(lo + size, n)
        for k, v in stream.items():  # after every batch: counts of the last 5000 values
            recount = np.bincount(
                refs[k].bin_of(v[max(0, lo - 5000) : lo]), minlength=refs[k].n_bins
            )
            assert np.array_equal(w.counts(k), recount), (k, lo)
    assert len(w) == 5000
    for k, v in stream.items():
        recount = np.bincount(refs[k].bin_of(v[-5000:]), minlength=refs[k].n_bins)
        assert np.array_equal(w.counts(k), recount), k
        assert w.metrics()[k] == drift(refs[k].shares(), recount)
    assert psi_band(w.metrics()["a"]["psi"]) == "significant"
    assert psi_band(w.metrics()["b"]["psi"]) == "stable"


def test_bad_references_are_refused() -> None:
    with pytest.raises(ValueError, match="B \\+ 1 edges"):
        Reference.of({"edges": [0, 1], "counts": [1, 2]})
    with pytest.raises(ValueError, match="increase"):
        Reference.of({"edges": [0, 1, 1], "counts": [1, 2]})
    with pytest.raises(ValueError, match="at least one"):
        DriftWindow({}, size=0)
