"""Quality metrics against scikit-learn on random and adversarial windows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from monitoring.quality import QualityWindow, auc_standard_error, quality

TOL = 1e-9


def _ece_oracle(labels: np.ndarray, scores: np.ndarray) -> float:
    """ECE from scikit-learn's calibration curve and its bins' sizes."""
    prob_true, prob_pred = calibration_curve(labels, scores, n_bins=10, strategy="uniform")
    inner = np.linspace(0, 1, 11)[1:-1]
    sizes = np.bincount(np.searchsorted(inner, scores, side="left"), minlength=10)
    sizes = sizes[sizes > 0]
    return float(np.sum(sizes / len(scores) * np.abs(prob_true - prob_pred)))


def _check(scores: np.ndarray, labels: np.ndarray) -> None:
    got = quality(scores, labels)
    if 0 < labels.sum() < len(labels):
        assert got["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=TOL)
    else:
        assert np.isnan(got["auc"])
    assert got["log_loss"] == pytest.approx(log_loss(labels, scores, labels=[0, 1]), abs=TOL)
    assert got["brier"] == pytest.approx(brier_score_loss(labels, scores), abs=TOL)
    assert got["ece"] == pytest.approx(_ece_oracle(labels, scores), abs=TOL)
    assert got["positive_rate"] == pytest.approx(labels.mean(), abs=TOL)
    assert got["mean_score"] == pytest.approx(scores.mean(), abs=TOL)


@pytest.mark.parametrize("seed", range(5))
def test_random_windows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 5000))
    scores = rng.beta(2, 5, n)
    labels = (rng.random(n) < scores).astype(np.int64)
    _check(scores, labels)


@pytest.mark.parametrize(
    "case",
    ["ties", "one class", "all same score", "extremes", "bin edges", "single pair"],
)
def test_adversarial_windows(case: str) -> None:
    rng = np.random.default_rng(7)
    n = 2000
    labels = (rng.random(n) < 0.3).astype(np.int64)
    scores = {
        "ties": np.round(rng.random(n), 1),  # 11 distinct scores, heavy ties across classes
        "one class": rng.random(n),
        "all same score": np.full(n, 0.42),
        "extremes": rng.choice([0.0, 1.0, 1e-18, 1 - 1e-16], n),  # log loss clipping
        "bin edges": rng.choice(np.linspace(0, 1, 11), n),  # exactly on ECE bin edges
        "single pair": rng.random(n),
    }[case]
    if case == "one class":
        labels[:] = 1
    if case == "single pair":
        scores, labels = scores[:1], labels[:1]
    _check(scores, labels)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 1.0]) | st.floats(0, 1), st.booleans()
        ),
        min_size=1,
        max_size=60,
    )
)
def test_any_window(pairs: list[tuple[float, bool]]) -> None:
    scores = np.array([s for s, _ in pairs])
    labels = np.array([int(y) for _, y in pairs])
    _check(scores, labels)


def test_window_keeps_the_most_recent_pairs() -> None:
    rng = np.random.default_rng(3)
    scores, labels = rng.random(12_345), (rng.random(12_345) < 0.2).astype(np.int64)
    w = QualityWindow(size=5000)
    lo = 0
    for size in rng.integers(1, 900, size=100):  # batches of every size, then single pairs
        w.add_many(scores[lo : lo + size], labels[lo : lo + size])
        lo += int(size)
        if lo >= len(scores):
            break
    for i in range(lo, min(lo + 50, len(scores))):
        w.add(scores[i], labels[i])
    end = min(lo + 50, len(scores))
    kept_s, kept_y = w.pairs()
    assert len(w) == 5000
    assert np.array_equal(kept_s, scores[end - 5000 : end])
    assert np.array_equal(kept_y, labels[end - 5000 : end])
    assert w.metrics()["auc"] == pytest.approx(
        roc_auc_score(labels[end - 5000 : end], scores[end - 5000 : end]), abs=TOL
    )


def test_bad_pairs_are_refused() -> None:
    w = QualityWindow(size=10)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        w.add(0.5, 2)
    with pytest.raises(ValueError, match="scores in"):
        w.add(float("nan"), 1)
    with pytest.raises(ValueError, match="at least one"):
        QualityWindow(size=0)
    assert len(w) == 0 and np.isnan(w.metrics()["auc"])


def test_auc_standard_error_matches_the_spread_of_resampled_aucs() -> None:
    """Hanley-McNeil against the oracle it approximates: the standard deviation of the AUC
    over many draws of the same binormal world (60 positives, 940 negatives). Its
    exponential model makes it a little wide here (~10 %): the safe side for a trigger."""
    rng = np.random.default_rng(8)
    aucs = []
    for _ in range(2000):
        pos, neg = rng.normal(0.6, 1, 60), rng.normal(0.0, 1, 940)
        scores, labels = np.r_[pos, neg], np.r_[np.ones(60), np.zeros(940)]
        aucs.append(roc_auc_score(labels, scores))
    mean, spread = float(np.mean(aucs)), float(np.std(aucs))
    se = auc_standard_error(mean, 60, 940)
    assert spread * 0.95 <= se <= spread * 1.2
    assert np.isnan(auc_standard_error(0.7, 0, 100))
