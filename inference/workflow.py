"""``featflow train`` end to end: labels -> point-in-time features -> model -> registry.

A new model is promoted only if it beats the champion on the same recent
holdout by the configured AUC margin (or when there is no champion yet).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.spec import DEFAULT_LATENESS_MS, NO_EXPIRY, Expiry
from infra.config import Stores
from infra.events import EventRules


@dataclass(frozen=True)
class TrainReport:
    """What a training run registered, whether it was promoted and why."""

    version: str
    promoted: bool
    reason: str
    metrics: dict[str, float | None]


def read_labels(path: Path) -> pd.DataFrame:
    """Outcomes file (.parquet, .csv or .jsonl) with at least event_id and label (0/1)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif suffix == ".csv":
        frame = pd.read_csv(path, dtype={"event_id": str})
    elif suffix in {".jsonl", ".ndjson", ".json"}:
        frame = pd.read_json(path, lines=True, dtype={"event_id": str}, convert_dates=False)
    else:
        raise ValueError(f"{path}: unsupported labels file (use .parquet, .csv or .jsonl)")
    missing = {"event_id", "label"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    bad = ~frame["label"].isin([0, 1])
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} labels are not 0 or 1")
    if "probability" in frame.columns:  # a known true probability: training reports a ceiling
        p = pd.to_numeric(frame["probability"], errors="coerce")
        bad = ~((p >= 0) & (p <= 1))
        if bad.any():
            raise ValueError(f"{path}: {int(bad.sum())} probabilities are not in [0, 1]")
        frame = frame.assign(probability=p)
    return frame


def stored_labels(outcomes_dir: Path) -> pd.DataFrame:
    """Outcomes the worker stored from the ``outcomes`` topic; the last label per event wins."""
    if not outcomes_dir.exists() or not any(outcomes_dir.glob("*.parquet")):
        raise ValueError(
            f"no stored outcomes in {outcomes_dir}: run a worker while outcomes are "
            "published, or pass --labels FILE"
        )
    frame = pd.read_parquet(outcomes_dir)
    frame = frame.sort_values(["kafka_partition", "kafka_offset"], kind="stable")
    return frame.drop_duplicates("event_id", keep="last")


def train_and_register(
    stores: Stores,
    labels: pd.DataFrame | None = None,
    *,
    events: Path | None = None,
    rules: EventRules = EventRules(),
    lateness_ms: int = DEFAULT_LATENESS_MS,
    expiry: Expiry = NO_EXPIRY,
    partitions: int = 1,
    min_auc_gain: float = 0.0,
) -> TrainReport:
    """Train on ``labels`` (default: stored outcomes) joined to the offline store, or to
    ``events`` backfilled with the stream's kernels (``rules``, ``lateness_ms``); promote
    the model if its holdout AUC beats the champion's by ``min_auc_gain``."""
    if labels is None:
        labels = stored_labels(stores.outcomes_dir)
    from features.backfill import backfill
    from features.event_files import read_events
    from features.merchant_backfill import write_views
    from features.scoring_row import SCORING_FEATURES
    from inference.onnx_model import load_model
    from inference.registry import ModelRegistry
    from inference.train import train, training_set_by_event

    with tempfile.TemporaryDirectory() as scratch:
        offline_dir = stores.offline_dir
        if events is not None:  # analysts' path: the same kernels, into a scratch store
            rows = read_events(events, rules=rules)
            result = backfill(rows, lateness_ms=lateness_ms, expiry=expiry, partitions=partitions)
            offline_dir = write_views(Path(scratch), result.table, labels, tag="backfill")
        # Each label joins its own event's row (features as of that event) and its
        # merchant's rows as of just before it: O(N log N), whatever the busiest user or
        # merchant holds (Feast's file store is quadratic in it).
        data = training_set_by_event(offline_dir, labels)
        model = train(data)

    registry = ModelRegistry(stores.models_dir)
    version = registry.register(model.onnx, model.metadata).version
    champion = registry.champion()
    if champion is None:
        promoted, reason = True, "no champion yet"
    else:
        from sklearn.metrics import roc_auc_score

        # both as served (ONNX, float32): the fitted model's own AUC may differ in the last
        # rank from its ONNX export's, enough to refuse an identical model
        _, blob = registry.load_verified(champion.version, SCORING_FEATURES)
        old = load_model(champion.version, blob, SCORING_FEATURES).score(model.holdout_features)
        old_auc = float(roc_auc_score(model.holdout_label, old))
        new = load_model(version, model.onnx, SCORING_FEATURES).score(model.holdout_features)
        new_auc = float(roc_auc_score(model.holdout_label, new))
        margin = min_auc_gain
        promoted = new_auc >= old_auc + margin
        reason = (
            f"holdout AUC {new_auc:.4f} vs champion {champion.version} {old_auc:.4f} "
            f"(required gain {margin:+.4f})"
        )
    if promoted:
        registry.promote(version, SCORING_FEATURES)
    return TrainReport(version, promoted, reason, model.metadata["holdout_metrics"])
