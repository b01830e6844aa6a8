"""Drift references: the bins a model's training rows fall in, and how much each entity
weighs there. One definition for the trainer (which stores them in the registry) and the
monitor (whose windows count live predictions in the same bins with the same weights).
"""

from __future__ import annotations

from typing import Any

import numpy as np

HIST_BINS = 10
EDGE_MIN_GAP = 0.1  # reference edges at least 10 % of their magnitude apart
ENTITY_SHARE = 0.02  # an entity weighs at most this share of a reference or a window


def effective_size(per_entity_bins: np.ndarray, row_weight: np.ndarray) -> np.ndarray | float:
    """How many independent rows a weighted sample grouped by entity is worth:
    ``per_entity_bins`` [E, B] counts each entity's rows per bin (or [E, F, B] for F
    features at once: one size per feature), ``row_weight`` [E] the weight of each of its rows.

    Rows of one entity are not independent: a user's 24 h count is nearly the same for all
    its rows of an hour. The intra-entity correlation ``rho`` is estimated from how often
    two rows of one entity share a bin, beyond the chance ``sum(p_b^2)``; Kish's design
    effect ``1 + (m - 1) * rho`` (``m`` the weighted mean entity size) divides the total
    weight. Rows that vary freely within each entity count fully; entities whose rows all
    agree count once each.

    >>> free = np.array([[1, 1], [1, 1]])  # two entities, each with a row in both bins
    >>> float(effective_size(free, np.ones(2)))
    4.0
    >>> stuck = np.array([[2, 0], [0, 2]])  # each entity's rows agree
    >>> float(effective_size(stuck, np.ones(2)))
    2.0
    """
    c = np.asarray(per_entity_bins, dtype=np.float64)
    single = c.ndim == 2
    if single:
        c = c[:, None, :]
    w_row = np.asarray(row_weight, dtype=np.float64)
    n = c[:, 0, :].sum(axis=1)  # rows per entity (the same for every feature)
    weight = n * w_row
    total = float(weight.sum())
    features = c.shape[1]
    if total <= 0:
        out = np.zeros(features)
        return float(out[0]) if single else out
    shares = np.einsum("efb,e->fb", c, w_row) / total
    chance = (shares * shares).sum(axis=1)  # [F]
    pairs = n * (n - 1)
    many = pairs > 0
    mean_size = float(np.dot(weight, weight)) / total
    if not many.any():
        out = np.full(features, total)
    else:
        cm = c[many]
        agree = (cm * (cm - 1)).sum(axis=2) / pairs[many][:, None]  # [E', F]
        same = np.average(agree, axis=0, weights=weight[many])  # [F]
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(chance < 1.0, (same - chance) / (1.0 - chance), 1.0)
        rho = np.clip(rho, 0.0, 1.0)
        out = total / (1.0 + max(mean_size - 1.0, 0.0) * rho)
    return float(out[0]) if single else out


def entity_weights(counts: np.ndarray, total: int, share: float) -> np.ndarray:
    """Weight of each row of an entity holding ``counts`` of ``total`` rows: together at
    most ``share`` of the total (never under one row's worth); share 0: every row weighs 1.

    >>> entity_weights(np.array([1, 10, 100]), 200, 0.02).tolist()
    [1.0, 0.4, 0.04]
    """
    counts = np.asarray(counts, dtype=np.float64)
    if share <= 0:
        return np.ones_like(counts)
    cap = max(1.0, share * total)
    return np.minimum(1.0, cap / np.maximum(counts, 1.0))


def histogram(
    values: np.ndarray, edges: np.ndarray | None = None, entities: np.ndarray | None = None
) -> dict[str, Any]:
    """Reference histogram for drift monitoring: counts per bin of :func:`reference_edges`
    (or of ``edges`` where given); with ``entities`` (the user of each row), each user
    weighs at most ``ENTITY_SHARE`` of the rows, as the monitor's window weighs them, and
    ``effective_rows`` says how many independent rows they are worth
    (:func:`effective_size`): what sets how much PSI a stable stream shows by chance."""
    if edges is None:
        edges = reference_edges(values)
    clipped = np.clip(values, edges[0], edges[-1])
    share, weights, effective = 0.0, None, float(len(values))
    if entities is not None:
        _, inverse, per = np.unique(entities, return_inverse=True, return_counts=True)
        share = ENTITY_SHARE
        per_row = entity_weights(per, len(values), share)  # each entity's rows' weight
        weights = per_row[inverse]
        bins = np.clip(np.searchsorted(edges, clipped, side="right") - 1, 0, len(edges) - 2)
        per_entity = np.zeros((len(per), len(edges) - 1))
        np.add.at(per_entity, (inverse, bins), 1)
        effective = float(effective_size(per_entity, per_row))
    counts, _ = np.histogram(clipped, bins=edges, weights=weights)
    return {"edges": edges.tolist(), "counts": counts.tolist(), "entity_share": share,
            "effective_rows": effective}  # fmt: skip


def reference_edges(values: np.ndarray) -> np.ndarray:
    """Decile edges that one busy entity cannot move PSI with by itself.

    Real streams are skewed: one user can hold a sixth of the rows, and its feature value
    (a 24 h count, a 1 h sum) is then a point mass that moves a little all the time. A
    decile edge lands inside such a mass (a sixth of the rows spans a whole decile), the
    training maximum is often that user's own value, and plain decile edges let its
    jitter alone cross an edge or leave the top bin for the overflow: PSI "significant"
    in a stable world (0.75-0.9 measured on the demo's stream). So each interior decile
    edge moves to the middle of the widest gap between training values within
    ``EDGE_MIN_GAP`` of its magnitude (out of any tight cluster; in a smooth bulk it
    barely moves), edges closer than that to the previous one are merged, and the outer
    edges lie one training range beyond the sample: under- and overflow mean a value far
    outside what training saw, not one just past its most extreme row.
    """
    ordered = np.sort(values)
    quantiles = np.unique(np.quantile(ordered, np.linspace(0, 1, HIST_BINS + 1)))
    lo, hi = float(quantiles[0]), float(quantiles[-1])
    inner: list[float] = []
    for x in quantiles[1:-1]:
        band = EDGE_MIN_GAP * abs(x)
        near = ordered[np.searchsorted(ordered, x - band) : np.searchsorted(ordered, x + band)]
        around = np.unique(np.r_[x - band, near, x + band])
        if len(around) > 2:
            widest = int(np.argmax(np.diff(around)))
            x = (around[widest] + around[widest + 1]) / 2
        previous = inner[-1] if inner else lo
        if x - previous >= EDGE_MIN_GAP * max(abs(x), abs(previous)) and x < hi:
            inner.append(float(x))
    span = max(hi - lo, abs(hi), 1.0)
    return np.array([lo - span, *inner, hi + span])
