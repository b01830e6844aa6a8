"""``train_and_register`` with every parameter taken from ``Settings`` (CLI and demo)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from featflow.settings import Settings
from inference.workflow import TrainReport, train_and_register


def train_with(
    settings: Settings, labels: pd.DataFrame | None = None, events: Path | None = None
) -> TrainReport:
    """Train and maybe promote, as configured by ``settings``."""
    return train_and_register(
        settings.stores,
        labels,
        events=events,
        rules=settings.event_rules,
        lateness_ms=settings.lateness_ms,
        expiry=settings.expiry,
        partitions=settings.topic_partitions,
        min_auc_gain=settings.promotion_min_auc_gain,
    )
