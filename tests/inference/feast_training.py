"""Training rows through Feast's own ``get_historical_features``: the oracle that proves the
offline store is Feast's, and that ``training_set_by_event`` reads the same rows."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.feast_repo import FEATURE_VIEW, JOIN_KEY, TIMESTAMP_FIELD
from features.spec import FEATURE_NAMES
from inference.train import TrainingSet

if TYPE_CHECKING:
    from feast import FeatureStore


def training_set(store: FeatureStore, labelled: pd.DataFrame) -> TrainingSet:
    """Features as of each labelled event (columns: user_id, event_timestamp, label)."""
    entity_df = labelled[[JOIN_KEY, TIMESTAMP_FIELD, "label"]].copy()
    entity_df[TIMESTAMP_FIELD] = pd.to_datetime(entity_df[TIMESTAMP_FIELD], utc=True)
    refs = [f"{FEATURE_VIEW}:{name}" for name in FEATURE_NAMES]
    frame = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    frame = frame.dropna(subset=list(FEATURE_NAMES)).sort_values(TIMESTAMP_FIELD, kind="stable")
    features = frame[list(FEATURE_NAMES)].to_numpy(np.float64)
    label = frame["label"].to_numpy(np.int8)
    digest = hashlib.sha256(features.tobytes() + label.tobytes()).hexdigest()
    times = frame[TIMESTAMP_FIELD].reset_index(drop=True)
    return TrainingSet(features, label, times, digest, frame[JOIN_KEY].to_numpy(np.int64))


def labelled_events(outcomes: pd.DataFrame, offline: pd.DataFrame) -> pd.DataFrame:
    """Join outcomes (event_id, label) to their events' user and time in the offline rows."""
    times = offline[["event_id", JOIN_KEY, TIMESTAMP_FIELD]].drop_duplicates("event_id")
    return outcomes[["event_id", "label"]].merge(times, on="event_id", how="inner")
