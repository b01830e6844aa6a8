"""Derived features: row-wise functions of other features of the same row.

One function computes them for every path that makes a feature row (stream worker, batch
backfill, request-time scoring all call :meth:`features.state.WindowState.update`, which
calls :func:`fill_derived`), so the same inputs give bit-identical outputs everywhere.

Definitions (``a``, ``b`` the input features, ``v`` the threshold):

* ``ratio``: ``a / b``, and ``0.0`` where ``b == 0`` (a feature store holds no inf or NaN:
  "no typical amount yet" reads as no ratio);
* ``difference``: ``a - b``;
* ``below``: ``1.0`` if ``a < v`` else ``0.0``;
* ``equals``: ``1.0`` if ``a == v`` else ``0.0``.

A NaN input (a late event's row, never stored) gives a NaN output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.spec import DERIVED_AGGS, FeatureSpec


def derived_plan(specs: Sequence[FeatureSpec]) -> list[tuple[int, str, tuple[int, ...], float]]:
    """(column, operation, input columns, threshold) of each derived spec, in list order."""
    col = {s.name: j for j, s in enumerate(specs)}
    return [
        (j, s.agg, tuple(col[x] for x in s.inputs), float(s.threshold or 0.0))
        for j, s in enumerate(specs)
        if s.agg in DERIVED_AGGS
    ]


def fill_derived(out: np.ndarray, plan: Sequence[tuple[int, str, tuple[int, ...], float]]) -> None:
    """Write the derived columns of ``out`` ([n, F]) from its other columns, in place."""
    for j, op, inputs, v in plan:
        a = out[:, inputs[0]]
        if op == "ratio":
            b = out[:, inputs[1]]
            zero = b == 0.0
            out[:, j] = a / np.where(zero, 1.0, b)
            out[zero & ~np.isnan(a), j] = 0.0
        elif op == "difference":
            out[:, j] = a - out[:, inputs[1]]
        else:
            hit = (a < v) if op == "below" else (a == v)
            out[:, j] = np.where(np.isnan(a), np.nan, hit.astype(np.float64))
