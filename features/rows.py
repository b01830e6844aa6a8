"""Feature rows in the shapes the stores take: an Arrow table and a Feast frame.

Both stream and backfill build their rows here, so the offline schema has one
definition: ``event_id, <join key>, event_timestamp, <features...>,
kafka_partition, kafka_offset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from features.feast_repo import JOIN_KEY, TIMESTAMP_FIELD, feast_type_name
from features.spec import FeatureSpec
from infra.arrow import from_numpy

if TYPE_CHECKING:  # pandas (0.2 s to import) only for Feast's frame, not the parquet path
    import pandas as pd


def require_finite(specs: Sequence[FeatureSpec], features: np.ndarray) -> None:
    """Refuse to store a non-finite feature: Feast would keep it, and ``/predict`` would
    answer ``null`` for it. ``features.apply`` keeps such rows away, so this never fires
    unless something upstream is broken, and then loudly."""
    finite = np.isfinite(features)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise ValueError(
            f"refusing to store {specs[col].name} = {features[row, col]} (row {row}); "
            "non-finite features are dead-lettered before the stores"
        )


def _feature_column(spec: FeatureSpec, values: np.ndarray) -> np.ndarray:
    # Counts are exact integers held in float64 by the kernels; store them as int64.
    if feast_type_name(spec) == "Int64":
        return values.astype(np.int64)
    return values


def offline_table(
    specs: Sequence[FeatureSpec],
    *,
    event_id: Sequence[str] | pa.Array,
    entity_id: np.ndarray,
    event_time_ms: np.ndarray,
    features: np.ndarray,
    partition: np.ndarray,
    offset: np.ndarray,
    join_key: str = JOIN_KEY,
) -> pa.Table:
    """One row per accepted record, as written to the offline parquet store of the view
    keyed by ``join_key`` (``kafka_partition``/``kafka_offset``: the source record's)."""
    require_finite(specs, features)
    columns: dict[str, pa.Array] = {
        "event_id": event_id
        if isinstance(event_id, pa.Array)
        else pa.array(event_id, type=pa.string()),
        join_key: from_numpy(entity_id.astype(np.int64, copy=False)),
        TIMESTAMP_FIELD: from_numpy(
            event_time_ms.astype(np.int64, copy=False), pa.timestamp("ms", tz="UTC")
        ),
    }
    for j, spec in enumerate(specs):
        columns[spec.name] = from_numpy(_feature_column(spec, features[:, j]))
    columns["kafka_partition"] = from_numpy(partition.astype(np.int32, copy=False))
    columns["kafka_offset"] = from_numpy(offset.astype(np.int64, copy=False))
    return pa.table(columns)


def online_frame(
    specs: Sequence[FeatureSpec],
    *,
    entity_id: np.ndarray,
    event_time_ms: np.ndarray,
    features: np.ndarray,
    join_key: str = JOIN_KEY,
) -> pd.DataFrame:
    """Rows for Feast's online write: join key, event timestamp and features."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            join_key: entity_id.astype(np.int64),
            TIMESTAMP_FIELD: pd.to_datetime(event_time_ms, unit="ms", utc=True),
        }
    )
    for j, spec in enumerate(specs):
        frame[spec.name] = _feature_column(spec, features[:, j])
    return frame
