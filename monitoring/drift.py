"""Drift per feature and on the score against fixed reference bins, one prediction at a time.

The reference is what the registry stores for the champion: per feature (and for the
score) the bin edges of its training distribution and the training rows per bin
(``inference/train.py::histogram``). Live values are counted in the same bins plus an
underflow and an overflow bin, so values stay comparable from window to window (as
NannyML does; Evidently re-bins each window on the combined sample). A
:class:`DriftWindow` keeps the bin of every feature for the most recent ``size``
predictions in a ring and the counts per bin up to date by adding the newest and
expiring the oldest, never re-reading raw data; a snapshot reads the counts.

Per feature, with ``p`` the reference and ``q`` the live share of each bin:

- PSI ``sum((q - p) * ln(q / p))``, shares floored at ``PSI_FLOOR`` (an empty bin would
  make it infinite); bands 0.1 and 0.25 (:func:`psi_band`);
- KS, the largest gap between the two cumulative shares over the bins: the two-sample
  Kolmogorov-Smirnov statistic of the binned samples (``scipy.stats.ks_2samp`` on bin
  numbers gives the same value);
- JS, the Jensen-Shannon distance in bits, ``sqrt((KL(p||m) + KL(q||m)) / 2)`` with
  ``m = (p + q) / 2`` (``scipy.spatial.distance.jensenshannon(p, q, base=2)``).

``tests/monitoring/test_drift.py`` checks them against scipy and the formulas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

PSI_FLOOR = 1e-4
PSI_BANDS = (0.1, 0.25)  # below: stable; between: moderate; above: significant
DRIFT_METRICS = ("psi", "ks", "js")


def psi_band(psi: float) -> str:
    """``stable`` below 0.1, ``moderate`` below 0.25, else ``significant``."""
    low, high = PSI_BANDS
    return "stable" if psi < low else "moderate" if psi < high else "significant"


@dataclass(frozen=True)
class Reference:
    """One feature's reference bins: ``edges`` (B + 1, increasing) and training rows per
    bin (B). Live bins: 0 underflow (< edges[0]), 1..B as ``np.histogram`` (the last bin
    closed), B + 1 overflow (> edges[-1])."""

    edges: np.ndarray
    counts: np.ndarray

    @staticmethod
    def of(histogram: Mapping[str, Sequence[float]]) -> Reference:
        """From the registry's ``{"edges": [...], "counts": [...]}``."""
        edges = np.asarray(histogram["edges"], dtype=np.float64)
        counts = np.asarray(histogram["counts"], dtype=np.float64)
        if edges.ndim != 1 or len(edges) < 2 or len(counts) != len(edges) - 1:
            raise ValueError(f"a histogram needs B + 1 edges for B counts, got {histogram}")
        if not (np.diff(edges) > 0).all() or counts.sum() <= 0 or (counts < 0).any():
            raise ValueError("edges must increase and counts be non-negative, not all 0")
        return Reference(edges, counts)

    @property
    def n_bins(self) -> int:
        """Live bins: the reference's plus underflow and overflow."""
        return len(self.counts) + 2

    def shares(self) -> np.ndarray:
        """The reference share of each live bin (0 for underflow and overflow)."""
        return np.r_[0.0, self.counts / self.counts.sum(), 0.0]

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        """The live bin of each value (NaN counts as underflow: a missing value)."""
        b = np.searchsorted(self.edges, values, side="right")
        b[values == self.edges[-1]] = len(self.edges) - 1  # the last bin is closed
        return b


def drift(reference: np.ndarray, live: np.ndarray) -> dict[str, float]:
    """PSI, KS and JS between two vectors of bin counts (or shares) over the same bins."""
    p = reference / reference.sum()
    total = live.sum()
    if total <= 0:
        return dict.fromkeys(DRIFT_METRICS, float("nan"))
    q = live / total
    pf, qf = np.maximum(p, PSI_FLOOR), np.maximum(q, PSI_FLOOR)
    m = (p + q) / 2
    kl = [_kl_bits(p, m), _kl_bits(q, m)]
    return {
        "psi": float(np.sum((qf - pf) * np.log(qf / pf))),
        "ks": float(np.max(np.abs(np.cumsum(p) - np.cumsum(q)))),
        "js": float(np.sqrt(max((kl[0] + kl[1]) / 2, 0.0))),
    }


def _kl_bits(x: np.ndarray, m: np.ndarray) -> float:
    """KL(x || m) in bits, 0 log 0 = 0 (m > 0 wherever x > 0)."""
    nz = x > 0
    return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))


class DriftWindow:
    """The bins of the most recent ``size`` predictions, for several features at once.

    >>> ref = Reference.of({"edges": [0, 1, 2], "counts": [50, 50]})
    >>> w = DriftWindow({"amount": ref}, size=4)
    >>> w.add_many({"amount": np.array([0.5, 1.5, 0.5, 1.5, 9.0])})
    >>> w.counts("amount").tolist()  # the first 0.5 left; 9.0 is in the overflow bin
    [0, 1, 2, 1]
    >>> round(w.metrics()["amount"]["ks"], 3)
    0.25
    """

    def __init__(self, references: Mapping[str, Reference], size: int = 5000) -> None:
        if size < 1:
            raise ValueError(f"a drift window holds at least one prediction, got size={size}")
        self.size = size
        self.names = tuple(references)
        self.references = dict(references)
        self._width = max(r.n_bins for r in self.references.values())
        k = len(self.names)
        self._offset = np.arange(k, dtype=np.int64) * self._width  # feature f's bins
        self._ring = np.zeros((size, k), dtype=np.int64)
        self._counts = np.zeros(k * self._width, dtype=np.int64)
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add_many(self, values: Mapping[str, np.ndarray]) -> None:
        """Append predictions (one array per feature, equal lengths, arrival order)."""
        cols = [np.asarray(values[name], dtype=np.float64) for name in self.names]
        n = len(cols[0]) if cols else 0
        if any(len(c) != n for c in cols):
            raise ValueError("every feature needs one value per prediction")
        if n > self.size:
            cols, n = [c[-self.size :] for c in cols], self.size
        flat = (
            np.stack(
                [self.references[name].bin_of(c) for name, c in zip(self.names, cols, strict=True)],
                axis=1,
            )
            + self._offset
            if cols
            else np.zeros((n, 0), dtype=np.int64)
        )
        pos = (self._next + np.arange(n)) % self.size
        leaving = max(0, self._count + n - self.size)  # the oldest `leaving` rows expire
        if leaving:
            oldest = (self._next - self._count + np.arange(leaving)) % self.size
            self._counts -= np.bincount(self._ring[oldest].ravel(), minlength=len(self._counts))
        self._ring[pos] = flat
        self._counts += np.bincount(flat.ravel(), minlength=len(self._counts))
        self._next = (self._next + n) % self.size
        self._count = min(self.size, self._count + n)

    def counts(self, name: str) -> np.ndarray:
        """Live counts of ``name`` per live bin (underflow first, overflow last)."""
        f = self.names.index(name)
        return self._counts[f * self._width : f * self._width + self.references[name].n_bins]

    def metrics(self) -> dict[str, dict[str, float]]:
        """:func:`drift` of every feature against its reference, by feature name."""
        return {n: drift(self.references[n].shares(), self.counts(n)) for n in self.names}

    def snapshot(self) -> bytes:
        """The window and its references, for a checkpoint."""
        order = (self._next - self._count + np.arange(self._count)) % self.size
        refs = {n: (r.edges.tolist(), r.counts.tolist()) for n, r in self.references.items()}
        rows = self._ring[order] - self._offset  # bins, oldest first
        return msgspec.msgpack.encode((self.size, refs, rows.astype(np.int64).tobytes()))

    @staticmethod
    def restore(data: bytes) -> DriftWindow:
        """The window a :meth:`snapshot` was taken of."""
        size, refs, rows = msgspec.msgpack.decode(data)
        references = {n: Reference(np.array(e), np.array(c)) for n, (e, c) in refs.items()}
        w = DriftWindow(references, size)
        bins = np.frombuffer(rows, dtype=np.int64).reshape(-1, len(references))
        flat = bins + w._offset
        n = len(flat)
        w._ring[:n] = flat
        w._counts += np.bincount(flat.ravel(), minlength=len(w._counts))
        w._next, w._count = n % size, n
        return w
