"""Reading features back through Feast's own SDK (what online services do)."""

from __future__ import annotations

import pandas as pd

from features.feast_repo import FEATURE_VIEW, JOIN_KEY, open_store
from features.spec import DEFAULT_FEATURES, FEATURE_NAMES
from infra.config import Stores


def feature_refs() -> list[str]:
    """Feast feature references (``view:name``) of the default features."""
    return [f"{FEATURE_VIEW}:{spec.name}" for spec in DEFAULT_FEATURES]


def read_online(stores: Stores, user_ids: list[int]) -> pd.DataFrame:
    """One row per user in the order given; missing users have null features."""
    store = open_store(stores)
    response = store.get_online_features(
        features=feature_refs(), entity_rows=[{JOIN_KEY: u} for u in user_ids]
    )
    frame = response.to_df()
    return frame[[JOIN_KEY, *FEATURE_NAMES]]
