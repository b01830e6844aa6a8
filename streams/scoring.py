"""Stream scoring: each accepted event is scored as soon as its features exist.

The worker asks this scorer for prediction records after every batch, with each event's
merchant features as the online store holds them then (``features.scoring_row``); they go
to the ``predictions`` topic with the event id, so outcomes join them exactly as
they join HTTP predictions. While the registry names a shadow (a challenger on trial),
each event is also scored by it and published with ``role: shadow``: the monitor then
compares the two on the same labelled events. Champion and shadow are re-read from the
registry at most once a second and swapped atomically (see
:class:`inference.predictor.Predictor`).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import msgspec
import numpy as np

from features.scoring_row import SCORING_FEATURES, scoring_rows
from inference.predictor import Predictor
from inference.registry import ModelRegistry
from infra.events import EventBatch

_encoder = msgspec.json.Encoder()


class StreamScorer:
    """Scores a batch's accepted events with the registry's champion (and its shadow)."""

    def __init__(self, models_dir: Path, refresh_interval_s: float = 1.0):
        self.feature_names = SCORING_FEATURES
        registry = ModelRegistry(models_dir)
        self.predictor = Predictor(registry, self.feature_names)
        self.shadow = Predictor(registry, self.feature_names, alias=registry.shadow_version)
        self.refresh_interval_s = refresh_interval_s
        self._next_refresh = 0.0

    def records(
        self, events: EventBatch, features: np.ndarray, merchants: np.ndarray
    ) -> list[tuple[bytes, bytes]]:
        """(key, value) prediction records for the batch (user feature rows, and each event's
        merchant's rows as the online store holds them now); none until a champion exists."""
        now = time.monotonic()
        if now >= self._next_refresh:
            self.predictor.refresh()
            self.shadow.refresh()
            self._next_refresh = now + self.refresh_interval_s
        model = self.predictor.active
        if model is None or len(events) == 0:
            return []
        shadow = self.shadow.active
        if shadow is not None and shadow.version == model.version:
            shadow = None  # promoted: the champion now
        now_ms = int(time.time() * 1000)
        features = scoring_rows(features, merchants)
        values = features.tolist()
        out = []
        for role, scorer in (("champion", model), ("shadow", shadow)):
            if scorer is None:
                continue
            scores = scorer.score(features)
            for i in range(len(events)):
                user = int(events.user_id[i])
                record = {
                    "prediction_id": uuid.uuid4().hex,
                    "user_id": user,
                    "event_id": events.event_id[i],
                    "score": float(scores[i]),
                    "model_version": scorer.version,
                    "role": role,
                    "features": dict(zip(self.feature_names, values[i], strict=True)),
                    "event_time": int(events.event_time_ms[i]),
                    "prediction_time": now_ms,
                }
                out.append((str(user).encode(), _encoder.encode(record)))
        return out
