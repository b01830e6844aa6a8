"""Drift metrics against scipy and the formulas on the same bins; the window against a
recount from the raw values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from inference.reference import HIST_BINS, histogram
from monitoring.drift import PSI_FLOOR, DriftWindow, Reference, drift, psi_band, psi_noise

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


def _recount(ref: Reference, values: np.ndarray, users: np.ndarray, share: float) -> np.ndarray:
    """The oracle: pandas counts each user's rows among the values, weighs each row
    min(1, max(1, share * rows) / user's rows), and sums the weights per bin."""
    frame = pd.DataFrame({"bin": ref.bin_of(values), "user": users})
    per_user = frame.groupby("user")["user"].transform("size").to_numpy(np.float64)
    cap = max(1.0, share * len(frame))
    frame["w"] = np.minimum(1.0, cap / per_user) if share > 0 else 1.0
    return frame.groupby("bin")["w"].sum().reindex(range(ref.n_bins), fill_value=0.0).to_numpy()


@pytest.mark.parametrize("share", [0.0, 0.02])
def test_the_window_equals_a_recount_of_its_last_values(share: float) -> None:
    rng = np.random.default_rng(5)
    train = {"a": rng.normal(0, 1, 10_000), "b": rng.exponential(2.0, 10_000)}
    hists = {k: histogram(v) for k, v in train.items()}
    hists["score"] = histogram(rng.random(10_000), np.linspace(0, 1, 21))
    refs = {k: Reference.of({**h, "entity_share": share}) for k, h in hists.items()}
    n = 23_456
    stream = {
        "a": np.r_[rng.normal(0, 1, n // 2), rng.normal(1.5, 1, n - n // 2)],  # shifts midway
        "b": rng.exponential(2.0, n),
        "score": rng.random(n),
    }
    # skewed users: the busiest holds ~20 % of the rows, bursts of one user in a row
    users = np.minimum(rng.zipf(1.6, n), 5000).astype(np.int64)
    users[3000:3400] = 77
    w = DriftWindow(refs, size=5000)
    lo = 0
    while lo < n:
        size = int(rng.integers(1, 1200)) if lo else 4000  # a big first batch, then small
        w.add_many({k: v[lo : lo + size] for k, v in stream.items()}, users[lo : lo + size])
        lo = min(lo + size, n)
        last = slice(max(0, lo - 5000), lo)
        for k, v in stream.items():  # after every batch: the weighted counts of the last 5000
            recount = _recount(refs[k], v[last], users[last], share)
            np.testing.assert_allclose(w.counts(k), recount, rtol=1e-12, atol=1e-9)
    assert len(w) == 5000
    w.add_many({k: v[-6000:-5000] for k, v in stream.items()}, users[-6000:-5000])
    w.add_many({k: v[-5000:] for k, v in stream.items()}, users[-5000:])  # one whole window
    restored = DriftWindow.restore(w.snapshot())
    for k, v in stream.items():
        recount = _recount(refs[k], v[-5000:], users[-5000:], share)
        got = w.metrics()[k]
        for metric, value in drift(refs[k].shares(), recount).items():
            assert got[metric] == pytest.approx(value, abs=1e-12)
        again = restored.metrics()[k]  # the same sums in another slot order
        assert again == pytest.approx(got, rel=1e-12, abs=1e-15)
    assert psi_band(w.metrics()["a"]["psi"]) == "significant"
    assert psi_band(w.metrics()["b"]["psi"]) == "stable"


def test_bad_references_are_refused() -> None:
    with pytest.raises(ValueError, match="B \\+ 1 edges"):
        Reference.of({"edges": [0, 1], "counts": [1, 2]})
    with pytest.raises(ValueError, match="increase"):
        Reference.of({"edges": [0, 1, 1], "counts": [1, 2]})
    with pytest.raises(ValueError, match="at least one"):
        DriftWindow({}, size=0)


def test_psi_noise_is_what_samples_of_one_distribution_exceed_one_time_in_a_thousand() -> None:
    """The oracle is simulation: PSI between two independent samples of one distribution,
    4,000 times; psi_noise at 0.999 must be exceeded about 0.1 % of the time (at most 0.5 %),
    and the median PSI must sit well under it (it is a tail bound, not a typical value)."""
    rng = np.random.default_rng(12)
    ref = Reference.of(histogram(rng.lognormal(3, 1, 2000)))
    floor = psi_noise(len(ref.counts), 2000, 1000)
    psis = []
    for _ in range(4000):
        live = np.bincount(ref.bin_of(rng.lognormal(3, 1, 1000)), minlength=ref.n_bins)
        psis.append(drift(ref.shares(), live)["psi"])
    exceed = float(np.mean(np.array(psis) > floor))
    assert exceed <= 0.005, (exceed, floor)
    assert np.median(psis) < floor / 3


def test_a_window_of_few_users_is_worth_few_predictions() -> None:
    """Users whose rows all carry one value count once each; rows that vary freely within
    each user count fully (inference.reference.effective_size)."""
    ref = Reference.of(histogram(np.arange(1000.0)))
    w = DriftWindow({"x": ref}, size=1000)
    stuck = np.repeat(np.linspace(0, 999, 20), 50)  # 20 users, each one value
    w.add_many({"x": stuck}, np.repeat(np.arange(20), 50))
    assert w.effective_sizes()[0] == pytest.approx(20, rel=0.05)
    free = np.random.default_rng(1).uniform(0, 999, 1000)
    w.add_many({"x": free}, np.repeat(np.arange(20), 50))
    assert w.effective_sizes()[0] > 500
