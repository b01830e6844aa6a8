"""Drift per feature and on the score against fixed reference bins, one prediction at a time.

The reference is what the registry stores for the champion: per feature (and for the
score) the bin edges of its training distribution and the training rows per bin
(``inference/reference.py::histogram``). Live values are counted in the same bins plus an
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

Each entity (user) weighs at most ``entity_share`` of the window (the share its reference
was built with, ``inference.reference.ENTITY_SHARE``): an entity with ``n`` of the window's
``N`` predictions counts ``min(1, share * N / n)`` per prediction. On a skewed stream the
few busiest users hold a fifth, a tenth... of the predictions; their feature values are
point masses that move by themselves (a 24 h count, a largest amount), and unweighted bins
let each alone push PSI past 0.25 in a stable world. Weighted, drift says how the
population of users moved, and a stream without dominant users is counted as before.

``tests/monitoring/test_drift.py`` checks them against scipy and the formulas, and the
weighted window against a pandas recount.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import msgspec
import numpy as np

from inference.reference import effective_size, entity_weights

PSI_FLOOR = 1e-4
PSI_BANDS = (0.1, 0.25)  # below: stable; between: moderate; above: significant
DRIFT_METRICS = ("psi", "ks", "js")
PSI_NOISE = "psi_noise"  # the PSI a stable stream reaches by chance (see psi_noise)
PSI_NOISE_QUANTILE = 0.999  # per feature and snapshot: a dozen features, many snapshots


def psi_band(psi: float) -> str:
    """``stable`` below 0.1, ``moderate`` below 0.25, else ``significant``."""
    low, high = PSI_BANDS
    return "stable" if psi < low else "moderate" if psi < high else "significant"


@dataclass(frozen=True)
class Reference:
    """One feature's reference bins: ``edges`` (B + 1, increasing) and training rows per
    bin (B; weighted by ``entity_share`` when the reference was built with it, 0: not).
    Live bins: 0 underflow (< edges[0]), 1..B as ``np.histogram`` (the last bin closed),
    B + 1 overflow (> edges[-1])."""

    edges: np.ndarray
    counts: np.ndarray
    entity_share: float = 0.0
    effective_rows: float = 0.0  # users' worth of evidence (0: unknown, the counts' sum)

    @staticmethod
    def of(histogram: Mapping[str, Any]) -> Reference:
        """From the registry's ``{"edges": [...], "counts": [...], "entity_share": s}``."""
        edges = np.asarray(histogram["edges"], dtype=np.float64)
        counts = np.asarray(histogram["counts"], dtype=np.float64)
        share = float(histogram.get("entity_share", 0.0))
        effective = float(histogram.get("effective_rows", 0.0))
        if edges.ndim != 1 or len(edges) < 2 or len(counts) != len(edges) - 1:
            raise ValueError(f"a histogram needs B + 1 edges for B counts, got {histogram}")
        if not (np.diff(edges) > 0).all() or counts.sum() <= 0 or (counts < 0).any():
            raise ValueError("edges must increase and counts be non-negative, not all 0")
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"entity_share must be in [0, 1], got {share}")
        return Reference(edges, counts, share, effective)

    @property
    def effective_size(self) -> float:
        """How many independent rows the reference is worth."""
        return self.effective_rows or float(self.counts.sum())

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


def psi_noise(bins: int, reference_size: float, live_size: float) -> float:
    """The PSI two samples of one distribution exceed with probability 0.001 over
    ``bins`` bins: about ``chi2(bins - 1) * (1 / n_ref + 1 / n_live)`` (PSI is the
    symmetric KL divergence, twice which times the harmonic size is chi-square), with the
    chi-square quantile by Wilson-Hilferty. Sizes are effective sizes: on a stream where a
    few users hold most predictions and each user's features move together, a window of
    5,000 predictions may hold the evidence of 50, and PSI 0.3 is then chance, not drift.

    >>> round(psi_noise(10, 20_000, 5_000), 4)
    0.007
    """
    if reference_size <= 0 or live_size <= 0:
        return float("nan")
    dof = max(bins - 1, 1)
    z = NormalDist().inv_cdf(PSI_NOISE_QUANTILE)
    chi2 = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    return chi2 * (1 / reference_size + 1 / live_size)


def _kl_bits(x: np.ndarray, m: np.ndarray) -> float:
    """KL(x || m) in bits, 0 log 0 = 0 (m > 0 wherever x > 0)."""
    nz = x > 0
    return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))


class DriftWindow:
    """The bins of the most recent ``size`` predictions, for several features at once,
    each entity weighing at most its references' ``entity_share``.

    >>> ref = Reference.of({"edges": [0, 1, 2], "counts": [50, 50]})
    >>> w = DriftWindow({"amount": ref}, size=4)
    >>> w.add_many({"amount": np.array([0.5, 1.5, 0.5, 1.5, 9.0])}, np.arange(5))
    >>> w.counts("amount").tolist()  # the first 0.5 left; 9.0 is in the overflow bin
    [0.0, 1.0, 2.0, 1.0]
    >>> round(w.metrics()["amount"]["ks"], 3)
    0.25

    Per-entity bin counts are kept exactly (integers, one row per entity in the window);
    the weights apply when the counts are read, so a snapshot costs one product of them
    and adding a prediction stays a few array operations.
    """

    def __init__(self, references: Mapping[str, Reference], size: int = 5000) -> None:
        if size < 1:
            raise ValueError(f"a drift window holds at least one prediction, got size={size}")
        shares = {r.entity_share for r in references.values()}
        if len(shares) > 1:
            raise ValueError(f"references built with different entity shares: {shares}")
        self.entity_share = shares.pop() if shares else 0.0
        self.size = size
        self.names = tuple(references)
        self.references = dict(references)
        self._width = max((r.n_bins for r in self.references.values()), default=0)
        k = len(self.names)
        self._offset = np.arange(k, dtype=np.int64) * self._width  # feature f's bins
        self._ring = np.zeros((size, k), dtype=np.int64)  # flat bins of each prediction
        self._ring_entity = np.zeros(size, dtype=np.int64)
        self._ring_slot = np.zeros(size, dtype=np.int64)
        # per entity in the window (a slot each): its predictions and their bin counts
        self._slot_of: dict[int, int] = {}
        self._entity_of = np.zeros(size, dtype=np.int64)
        self._free = list(range(size - 1, -1, -1))
        self._n = np.zeros(size, dtype=np.int64)
        self._bins = np.zeros((size, k * self._width), dtype=np.int32)
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add_many(self, values: Mapping[str, np.ndarray], entities: np.ndarray) -> None:
        """Append predictions (one array per feature, and the entity of each, equal
        lengths, arrival order)."""
        cols = [np.asarray(values[name], dtype=np.float64) for name in self.names]
        entities = np.asarray(entities, dtype=np.int64)
        n = len(entities)
        if any(len(c) != n for c in cols):
            raise ValueError("every feature needs one value per prediction")
        if n > self.size:
            cols, entities, n = [c[-self.size :] for c in cols], entities[-self.size :], self.size
        flat = (
            np.stack(
                [self.references[name].bin_of(c) for name, c in zip(self.names, cols, strict=True)],
                axis=1,
            )
            + self._offset
            if cols
            else np.zeros((n, 0), dtype=np.int64)
        )
        self._insert(flat, entities)

    def _insert(self, flat: np.ndarray, entities: np.ndarray) -> None:
        n = len(entities)
        leaving = max(0, self._count + n - self.size)  # the oldest `leaving` rows expire
        if leaving:
            oldest = (self._next - self._count + np.arange(leaving)) % self.size
            slots = self._ring_slot[oldest]
            self._scatter(slots, self._ring[oldest], -1)
            self._n -= np.bincount(slots, minlength=self.size)
            for slot in np.unique(slots).tolist():
                if self._n[slot] == 0:
                    del self._slot_of[int(self._entity_of[slot])]
                    self._free.append(slot)
        unique, inverse = np.unique(entities, return_inverse=True)
        slot_of_unique = np.empty(len(unique), dtype=np.int64)
        for i, entity in enumerate(unique.tolist()):
            slot = self._slot_of.get(entity)
            if slot is None:
                slot = self._slot_of[entity] = self._free.pop()
                self._entity_of[slot] = entity
            slot_of_unique[i] = slot
        slots = slot_of_unique[inverse]
        self._scatter(slots, flat, 1)
        self._n += np.bincount(slots, minlength=self.size)
        pos = (self._next + np.arange(n)) % self.size
        self._ring[pos] = flat
        self._ring_entity[pos] = entities
        self._ring_slot[pos] = slots
        self._next = (self._next + n) % self.size
        self._count = min(self.size, self._count + n)

    def _scatter(self, slots: np.ndarray, flat: np.ndarray, sign: int) -> None:
        """Add ``sign`` to each (slot, bin) cell: ``np.add.at`` for a batch under a quarter
        of the window, else one bincount over all cells (5x faster for a full window, but it
        touches every cell)."""
        if flat.size == 0:
            return
        if len(slots) * 4 < self.size:
            np.add.at(self._bins, (slots[:, None], flat), sign)
            return
        width = self._bins.shape[1]
        cells = (slots[:, None] * width + flat).ravel()
        counts = np.bincount(cells, minlength=self._bins.size).astype(np.int32)
        self._bins += sign * counts.reshape(self._bins.shape)

    def _weighted(self) -> np.ndarray:
        weights = entity_weights(self._n, self._count, self.entity_share)
        weights[self._n == 0] = 0.0
        return weights @ self._bins

    def counts(self, name: str) -> np.ndarray:
        """Live (weighted) counts of ``name`` per live bin (underflow first, overflow last)."""
        f = self.names.index(name)
        return self._weighted()[f * self._width : f * self._width + self.references[name].n_bins]

    def effective_sizes(self) -> np.ndarray:
        """How many independent predictions the window is worth, per feature (in
        ``names`` order; :func:`inference.reference.effective_size` over the entities'
        bin counts)."""
        present = self._n > 0
        k = len(self.names)
        per_entity = self._bins[present].reshape(-1, k, self._width)
        weights = entity_weights(self._n[present], self._count, self.entity_share)
        return np.atleast_1d(effective_size(per_entity, weights))

    def metrics(self) -> dict[str, dict[str, float]]:
        """:func:`drift` of every feature against its reference, and its ``psi_noise``,
        by feature name."""
        weighted = self._weighted()
        sizes = self.effective_sizes() if self.names else []
        out = {}
        for f, name in enumerate(self.names):
            ref = self.references[name]
            live = weighted[f * self._width : f * self._width + ref.n_bins]
            out[name] = {
                **drift(ref.shares(), live),
                PSI_NOISE: psi_noise(len(ref.counts), ref.effective_size, float(sizes[f])),
            }
        return out

    def snapshot(self) -> bytes:
        """The window and its references, for a checkpoint."""
        order = (self._next - self._count + np.arange(self._count)) % self.size
        refs = {n: (r.edges.tolist(), r.counts.tolist(), r.entity_share, r.effective_rows)
                for n, r in self.references.items()}  # fmt: skip
        rows = self._ring[order] - self._offset  # bins, oldest first
        entities = self._ring_entity[order]
        return msgspec.msgpack.encode(
            (self.size, refs, rows.astype(np.int64).tobytes(), entities.tobytes())
        )

    @staticmethod
    def restore(data: bytes) -> DriftWindow:
        """The window a :meth:`snapshot` was taken of."""
        size, refs, rows, entities = msgspec.msgpack.decode(data)
        references = {
            n: Reference(np.array(e), np.array(c), float(share), float(effective))
            for n, (e, c, share, effective) in refs.items()
        }
        w = DriftWindow(references, size)
        bins = np.frombuffer(rows, dtype=np.int64).reshape(-1, len(references))
        w._insert(bins + w._offset, np.frombuffer(entities, dtype=np.int64))
        return w
