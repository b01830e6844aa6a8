"""The promotion gate: does the challenger beat the champion on the same labelled events?

Both models score the same most-recent holdout; their AUCs are correlated (same events),
so the difference is judged with DeLong's test for paired ROC curves (DeLong, DeLong and
Clarke-Pearson 1988), computed with midranks in O(n log n) (Sun and Xu 2014). The
challenger wins only if its AUC exceeds the champion's by more than ``margin`` *and* the
one-sided p-value of "the true difference is at most ``margin``" is below ``alpha``: a
point estimate alone (what MLflow's validation compares) promotes noise on small holdouts.
``tests/inference/test_gate.py`` checks the statistic against a brute-force computation of
DeLong's placement values, and the AUCs against scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata


@dataclass(frozen=True)
class PairedAuc:
    """Two models' AUCs on the same events and DeLong's variance of their difference."""

    auc_a: float
    auc_b: float
    variance: float  # of auc_a - auc_b
    positives: int
    negatives: int

    @property
    def difference(self) -> float:
        """``auc_a - auc_b``."""
        return self.auc_a - self.auc_b

    def p_at_most(self, margin: float = 0.0) -> float:
        """One-sided p-value of "the true ``auc_a - auc_b`` is at most ``margin``"."""
        if self.variance <= 0.0:  # identical rankings, or a degenerate holdout
            return 0.0 if self.difference > margin else 1.0
        return float(norm.sf((self.difference - margin) / math.sqrt(self.variance)))


def delong(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> PairedAuc:
    """DeLong's paired comparison of two score vectors on the same 0/1 labels.

    >>> y = np.array([0, 0, 1, 1, 0, 1])
    >>> r = delong(y, np.array([.1, .2, .8, .7, .3, .9]), np.array([.5, .2, .4, .7, .6, .3]))
    >>> round(r.auc_a, 3), round(r.auc_b, 3)
    (1.0, 0.556)
    """
    labels = np.asarray(labels)
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"need at least 2 positives and 2 negatives, got {m} and {n}")
    v01, v10, aucs = [], [], []
    for scores in (np.asarray(scores_a, float), np.asarray(scores_b, float)):
        x, y = scores[positive], scores[~positive]
        tz = rankdata(np.r_[x, y])  # midranks over all events
        tx, ty = rankdata(x), rankdata(y)
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v01.append((tz[:m] - tx) / n)  # per positive: share of negatives ranked below
        v10.append(1.0 - (tz[m:] - ty) / m)  # per negative: share of positives above
    sx = np.cov(np.vstack(v01))
    sy = np.cov(np.vstack(v10))
    s = sx / m + sy / n
    variance = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return PairedAuc(float(aucs[0]), float(aucs[1]), max(variance, 0.0), m, n)


@dataclass(frozen=True)
class GateVerdict:
    """Whether the challenger is promoted, and the figures that decided it."""

    promote: bool
    reason: str
    champion_auc: float
    challenger_auc: float
    p_value: float


def challenger_wins(
    labels: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    *,
    margin: float = 0.0,
    alpha: float = 0.05,
) -> GateVerdict:
    """Promote only if the challenger's AUC beats the champion's by more than ``margin``
    with one-sided confidence ``1 - alpha`` (DeLong, paired on the same events)."""
    r = delong(labels, challenger, champion)
    return decide(
        r.auc_b, r.auc_a, math.sqrt(r.variance), r.positives + r.negatives,
        margin=margin, alpha=alpha,
    )  # fmt: skip


def decide(
    champion_auc: float,
    challenger_auc: float,
    se: float,
    events: int,
    *,
    margin: float = 0.0,
    alpha: float = 0.05,
    where: str = "",
) -> GateVerdict:
    """The verdict from paired AUCs and the standard error of their difference: the same
    rule for the trainer's holdout and for the monitor's live shadow comparison."""
    r = PairedAuc(challenger_auc, champion_auc, se * se, 0, 0)
    p = r.p_at_most(margin)
    figures = (
        f"challenger AUC {challenger_auc:.4f} vs champion {champion_auc:.4f} on {events}"
        f" events{where} (difference {r.difference:+.4f}, margin {margin:g}, p {p:.3g})"
    )
    if r.difference <= margin:
        return GateVerdict(False, f"no better: {figures}", champion_auc, challenger_auc, p)
    if p >= alpha:
        return GateVerdict(
            False, f"not significant at {alpha:g}: {figures}", champion_auc, challenger_auc, p
        )
    return GateVerdict(True, f"better: {figures}", champion_auc, challenger_auc, p)
