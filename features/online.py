"""Online store writer: the newest feature row of each user, through Feast.

Callers pass only rows that hold each user's newest event time (the window
state knows which), so a row is never overwritten by an older event even
though Feast's SQLite store upserts unconditionally.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from features.feast_repo import FEATURE_VIEW
from features.rows import online_frame
from features.spec import FeatureSpec

if TYPE_CHECKING:
    from feast import FeatureStore


class OnlineWriter:
    def __init__(self, store: FeatureStore, specs: Sequence[FeatureSpec]):
        self.store = store
        self.specs = tuple(specs)

    def write(self, *, user_id: np.ndarray, event_time_ms: np.ndarray, features: np.ndarray) -> int:
        """Upsert one row per user; returns the number of rows written."""
        if len(user_id) == 0:
            return 0
        frame = online_frame(
            self.specs, user_id=user_id, event_time_ms=event_time_ms, features=features
        )
        self.store.write_to_online_store(FEATURE_VIEW, frame)
        return len(frame)
