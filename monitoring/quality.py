"""Model quality over the most recent labelled predictions of one model version, exact.

A :class:`QualityWindow` keeps the last ``size`` (score, label) pairs in a ring; metrics
are computed from those pairs when a snapshot asks (``O(size log size)``, ~0.5 ms for 5,000
pairs), not approximated from running sketches: ROC AUC is the Mann-Whitney statistic with
tied scores counted one half (what scikit-learn's ``roc_auc_score`` computes), log loss
clips scores to ``[eps, 1 - eps]`` with float64's machine epsilon (as scikit-learn does),
and the expected calibration error uses 10 equal-width bins closed on the right, the bins of
``sklearn.calibration.calibration_curve``. ``tests/monitoring/test_quality.py`` checks each
against scikit-learn to 1e-9, on random windows, ties, one class and constant scores.

Where a metric is undefined (AUC with one class present, anything on an empty window) it
is NaN, and ``samples`` says how many pairs it would have used.
"""

from __future__ import annotations

import msgspec
import numpy as np

ECE_BINS = 10
QUALITY_METRICS = ("auc", "log_loss", "brier", "ece", "positive_rate", "mean_score")
_EPS = float(np.finfo(np.float64).eps)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + half P(equal); NaN with one class.

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    # average rank of each run of equal scores (1-based): ties count one half
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], len(ranked)]
    average = (starts + ends + 1) / 2.0
    ranks = np.repeat(average, ends - starts)
    rank_sum = float(ranks[labels[order] == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Standard error of an AUC over ``positives`` and ``negatives`` (Hanley and McNeil,
    1982): what a rule comparing a live AUC with another needs, so that a window of a few
    dozen positives is not read as a drop. NaN without both classes."""
    if positives < 1 or negatives < 1 or auc != auc:
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    return float(np.sqrt(max(var, 0.0)))


def log_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood, scores clipped to ``[eps, 1 - eps]``."""
    if not len(scores):
        return float("nan")
    p = np.clip(scores, _EPS, 1.0 - _EPS)
    return float(-np.mean(np.where(labels == 1, np.log(p), np.log1p(-p))))


def brier(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared difference between score and label."""
    if not len(scores):
        return float("nan")
    return float(np.mean((scores - labels) ** 2))


def expected_calibration_error(scores: np.ndarray, labels: np.ndarray) -> float:
    """Sum over 10 equal-width score bins of ``n_bin / n * |mean label - mean score|``.

    Bins are ``[0, 0.1], (0.1, 0.2], ..., (0.9, 1]``, as ``calibration_curve`` draws them.
    """
    if not len(scores):
        return float("nan")
    inner = np.linspace(0.0, 1.0, ECE_BINS + 1)[1:-1]
    bins = np.searchsorted(inner, scores, side="left")
    gap = np.bincount(bins, weights=labels - scores, minlength=ECE_BINS)
    return float(np.abs(gap).sum() / len(scores))


def quality(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every quality metric of these pairs (labels 0/1), by name (``QUALITY_METRICS``)."""
    labels = labels.astype(np.float64)
    empty = not len(scores)
    return {
        "auc": roc_auc(scores, labels),
        "log_loss": log_loss(scores, labels),
        "brier": brier(scores, labels),
        "ece": expected_calibration_error(scores, labels),
        "positive_rate": float("nan") if empty else float(labels.mean()),
        "mean_score": float("nan") if empty else float(scores.mean()),
    }


class QualityWindow:
    """The most recent ``size`` labelled predictions of one model version.

    >>> w = QualityWindow(size=3)
    >>> w.add_many(np.array([0.9, 0.2, 0.7, 0.6]), np.array([1, 0, 0, 1]))
    >>> len(w), w.metrics()["positive_rate"]  # the first pair has left
    (3, 0.3333333333333333)
    """

    def __init__(self, size: int = 5000) -> None:
        if size < 1:
            raise ValueError(f"a quality window holds at least one pair, got size={size}")
        self.size = size
        self._scores = np.empty(size, dtype=np.float64)
        self._labels = np.empty(size, dtype=np.int8)
        self._next = 0  # ring position of the next pair
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add_many(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Append pairs in arrival order; the oldest leave once the window is full."""
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels)
        if scores.shape != labels.shape or scores.ndim != 1:
            raise ValueError(f"scores {scores.shape} and labels {labels.shape}: equal 1-D")
        if not np.isin(labels, (0, 1)).all() or not ((scores >= 0) & (scores <= 1)).all():
            raise ValueError("labels must be 0 or 1 and scores in [0, 1]")
        if len(scores) > self.size:  # only the last `size` can stay
            scores, labels = scores[-self.size :], labels[-self.size :]
        pos = (self._next + np.arange(len(scores))) % self.size
        self._scores[pos] = scores
        self._labels[pos] = labels
        self._next = (self._next + len(scores)) % self.size
        self._count = min(self.size, self._count + len(scores))

    def add(self, score: float, label: int) -> None:
        """Append one pair (the same checks as :meth:`add_many`, without arrays: ~1 us)."""
        if label not in (0, 1) or not 0.0 <= score <= 1.0:  # NaN fails the second test
            raise ValueError(f"labels must be 0 or 1 and scores in [0, 1], got {score}, {label}")
        self._scores[self._next] = score
        self._labels[self._next] = label
        self._next = (self._next + 1) % self.size
        if self._count < self.size:
            self._count += 1

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The window's (scores, labels), oldest first."""
        if self._count < self.size:
            return self._scores[: self._count].copy(), self._labels[: self._count].copy()
        order = np.r_[self._next : self.size, 0 : self._next]
        return self._scores[order], self._labels[order]

    def metrics(self) -> dict[str, float]:
        """:func:`quality` of the window's pairs."""
        return quality(*self.pairs())

    def snapshot(self) -> bytes:
        """The window, for a checkpoint."""
        scores, labels = self.pairs()
        return msgspec.msgpack.encode((self.size, scores.tobytes(), labels.tobytes()))

    @staticmethod
    def restore(data: bytes) -> QualityWindow:
        """The window a :meth:`snapshot` was taken of."""
        size, scores, labels = msgspec.msgpack.decode(data)
        w = QualityWindow(size)
        w.add_many(np.frombuffer(scores, dtype=np.float64), np.frombuffer(labels, dtype=np.int8))
        return w
