"""The promotion gate: DeLong's paired test against brute-force placement values, AUCs
against scikit-learn, and the verdicts on better, equal and worse challengers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from inference.gate import challenger_wins, delong


def _brute_force(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong's variance from its definition: psi over every (positive, negative) pair."""
    comps = []
    for s in (a, b):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        comps.append((psi.mean(axis=1), psi.mean(axis=0), psi.mean()))
    m, n = int((y == 1).sum()), int((y == 0).sum())
    s10 = np.cov(np.vstack([c[0] for c in comps]))
    s01 = np.cov(np.vstack([c[1] for c in comps]))
    s = s10 / m + s01 / n
    return comps[0][2], comps[1][2], s[0, 0] + s[1, 1] - 2 * s[0, 1]


@pytest.mark.parametrize("seed", range(6))
def test_delong_equals_its_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 900))
    y = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(int)
    y[:2], y[2:4] = 1, 0
    a = y * rng.normal(1.0, 1.0, n) + rng.normal(0, 1, n)
    b = np.round(a + rng.normal(0, 0.8, n), 1 if seed % 2 else 6)  # ties on odd seeds
    r = delong(y, a, b)
    auc_a, auc_b, var = _brute_force(y, a, b)
    assert r.auc_a == pytest.approx(auc_a, abs=1e-12)
    assert r.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert r.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert r.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert r.variance == pytest.approx(var, rel=1e-9, abs=1e-15)


def test_verdicts() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    y = (rng.random(n) < 0.2).astype(int)
    signal = y + rng.normal(0, 1.0, n)
    champion = signal + rng.normal(0, 1.5, n)
    better = signal + rng.normal(0, 0.3, n)
    assert challenger_wins(y, champion, better).promote
    same = challenger_wins(y, champion, champion)
    assert not same.promote and same.reason.startswith("no better")
    worse = challenger_wins(y, champion, champion + rng.normal(0, 2.0, n))
    assert not worse.promote
    # a small edge on a small holdout is not significant, however it points
    tiny = slice(0, 150)
    slightly = champion + 0.02 * y  # better on every positive, by a hair
    verdict = challenger_wins(y[tiny], champion[tiny], slightly[tiny])
    assert not verdict.promote, verdict.reason
    # the margin applies: a real gain below it does not promote
    assert not challenger_wins(y, champion, better, margin=0.5).promote


def test_too_few_of_a_class() -> None:
    with pytest.raises(ValueError, match="at least 2 positives"):
        delong(np.array([1, 0, 0, 0]), np.arange(4.0), np.arange(4.0))
