"""Training rows through Feast's own ``get_historical_features``: the oracle that proves the
offline store is Feast's, and that ``training_set_by_event`` reads the same rows."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.feast_repo import FEATURE_VIEW, JOIN_KEY, TIMESTAMP_FIELD
from features.scoring_row import MERCHANT_DEFAULTS, MERCHANT_INPUTS, SCORING_FEATURES
from features.spec import FEATURE_NAMES
from features.views import MERCHANT_VIEWS
from inference.train import TrainingSet

if TYPE_CHECKING:
    from feast import FeatureStore


def training_set(store: FeatureStore, labelled: pd.DataFrame) -> TrainingSet:
    """Features as of each labelled event (columns: user_id, event_timestamp, label,
    event_id), in the order of ``training_set_by_event`` (time, then event id): the
    user view at the event's time, then the merchant views at one millisecond before it
    (Feast's point-in-time join takes rows at or before a time; training takes the
    merchant's rows strictly before the event)."""
    entity_df = labelled[[JOIN_KEY, TIMESTAMP_FIELD, "label", "event_id"]].copy()
    entity_df[TIMESTAMP_FIELD] = pd.to_datetime(entity_df[TIMESTAMP_FIELD], utc=True)
    entity_df["row"] = np.arange(len(entity_df))
    refs = [f"{FEATURE_VIEW}:{name}" for name in FEATURE_NAMES]
    frame = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    frame = frame.dropna(subset=list(FEATURE_NAMES))
    merchants = frame[["row", "merchant_id", TIMESTAMP_FIELD]].copy()
    merchants[TIMESTAMP_FIELD] -= pd.Timedelta(milliseconds=1)
    for view in MERCHANT_VIEWS:  # one view at a time: a row one view lacks drops out of both
        refs = [f"{view.name}:{s.name}" for s in view.specs]
        try:
            found = store.get_historical_features(entity_df=merchants, features=refs).to_df()
        except ValueError as exc:  # the view has no part file at all: every merchant is new
            if "No files satisfy" not in str(exc):
                raise
            continue
        # Feast's file store leaves out an entity row that no feature row precedes: a
        # merchant with no row yet, which training reads as the views' defaults
        found = found.drop(columns=["merchant_id", TIMESTAMP_FIELD])
        frame = frame.merge(found, on="row", how="left")
    for name, default in zip(MERCHANT_INPUTS, MERCHANT_DEFAULTS.tolist(), strict=True):
        frame[name] = frame[name].astype(float).fillna(default) if name in frame else default
    frame = frame.sort_values([TIMESTAMP_FIELD, "event_id"], kind="stable")
    features = frame[list(SCORING_FEATURES)].to_numpy(np.float64)
    label = frame["label"].to_numpy(np.int8)
    digest = hashlib.sha256(features.tobytes() + label.tobytes()).hexdigest()
    times = frame[TIMESTAMP_FIELD].reset_index(drop=True)
    return TrainingSet(features, label, times, digest, frame[JOIN_KEY].to_numpy(np.int64))


def labelled_events(outcomes: pd.DataFrame, offline: pd.DataFrame) -> pd.DataFrame:
    """Join outcomes (event_id, label) to their events' user and time in the offline rows."""
    times = offline[["event_id", JOIN_KEY, TIMESTAMP_FIELD]].drop_duplicates("event_id")
    return outcomes[["event_id", "label"]].merge(times, on="event_id", how="inner")
