"""A monitoring snapshot in long form: one row per (model version, metric, feature).

The monitor writes these rows as JSON on topic ``monitoring`` and as parquet under
``$FEATFLOW_HOME/monitoring/``: ``time, model_version, metric, feature (None for
model-level metrics), value, samples`` (labelled pairs behind a quality value, predictions
behind a drift value). The retraining policy (:mod:`monitoring.policy`) reads the same rows.
"""

from __future__ import annotations

import msgspec

from monitoring.drift import DriftWindow
from monitoring.quality import QualityWindow


class MetricRow(msgspec.Struct, frozen=True):
    """One value of a snapshot."""

    time_ms: int
    model_version: str
    metric: str
    feature: str | None  # None for model-level metrics
    value: float
    samples: int


def rows_of(
    time_ms: int,
    model_version: str,
    quality: QualityWindow | None = None,
    drift: DriftWindow | None = None,
) -> list[MetricRow]:
    """The rows of one model version's windows at ``time_ms``.

    >>> import numpy as np
    >>> w = QualityWindow(size=10)
    >>> w.add_many(np.array([0.2, 0.9]), np.array([0, 1]))
    >>> [(r.metric, round(r.value, 4), r.samples) for r in rows_of(5, "v1", w)][:2]
    [('auc', 1.0, 2), ('log_loss', 0.1643, 2)]
    """
    rows: list[MetricRow] = []
    if quality is not None:
        n = len(quality)
        for metric, value in quality.metrics().items():
            rows.append(MetricRow(time_ms, model_version, metric, None, value, n))
    if drift is not None:
        n = len(drift)
        for feature, values in drift.metrics().items():
            for metric, value in values.items():
                rows.append(MetricRow(time_ms, model_version, metric, feature, value, n))
    return rows
