"""Training: point-in-time features from Feast, scikit-learn, ONNX export, checks.

Each labelled event is looked up with Feast ``get_historical_features`` at the
event's own time, so a feature value written after the event can never leak
into its row: the model learns from exactly what stream scoring saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.feast_repo import FEATURE_VIEW, JOIN_KEY, TIMESTAMP_FIELD
from features.spec import FEATURE_NAMES

if TYPE_CHECKING:
    from feast import FeatureStore

ONNX_ATOL = 1e-5  # ONNX vs scikit-learn probability agreement required before registering
HIST_BINS = 10


@dataclass(frozen=True)
class TrainingSet:
    """Point-in-time feature rows with their labels, in event-time order."""

    features: np.ndarray  # float64 [n, F], in FEATURE_NAMES order
    label: np.ndarray  # int8 [n]
    event_time: pd.Series  # UTC timestamps, for the time-ordered holdout split
    fingerprint: str  # sha256 of the rows, so a model names the data it was trained on


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
    return TrainingSet(features, label, frame[TIMESTAMP_FIELD].reset_index(drop=True), digest)


def labelled_events(outcomes: pd.DataFrame, offline: pd.DataFrame) -> pd.DataFrame:
    """Join outcomes (event_id, label) to their events' user and time in the offline rows."""
    times = offline[["event_id", JOIN_KEY, TIMESTAMP_FIELD]].drop_duplicates("event_id")
    return outcomes[["event_id", "label"]].merge(times, on="event_id", how="inner")


def histogram(values: np.ndarray, edges: np.ndarray | None = None) -> dict[str, list[float]]:
    """Reference histogram for drift monitoring: quantile edges, counts per bin."""
    if edges is None:
        edges = np.unique(np.quantile(values, np.linspace(0, 1, HIST_BINS + 1)))
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


@dataclass(frozen=True)
class TrainedModel:
    """An ONNX model with its metadata and the holdout it was judged on."""

    onnx: bytes
    metadata: dict[str, Any]
    holdout_features: np.ndarray
    holdout_label: np.ndarray


def train(
    data: TrainingSet,
    *,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    feature_names: Sequence[str] = FEATURE_NAMES,
) -> TrainedModel:
    """Fit on the older rows, evaluate on the newest ``holdout_fraction``, export ONNX."""
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    n = len(data.label)
    cut = int(n * (1 - holdout_fraction))
    if cut < 50 or n - cut < 20 or len(np.unique(data.label[:cut])) < 2:
        raise ValueError(f"not enough labelled rows to train and hold out ({n} rows)")
    x_train, y_train = data.features[:cut], data.label[:cut]
    x_hold, y_hold = data.features[cut:], data.label[cut:]
    # Trees compute in float32 in both scikit-learn and ONNX, so they agree closely.
    # (HistGradientBoosting does not convert with the pinned skl2onnx/onnx.)
    model = GradientBoostingClassifier(n_estimators=150, max_depth=3, random_state=seed)
    model.fit(x_train.astype(np.float32), y_train)
    onx = to_onnx(
        model, x_train[:1].astype(np.float32), options={"zipmap": False}, target_opset=17
    ).SerializeToString()

    session = ort.InferenceSession(onx, providers=["CPUExecutionProvider"])
    onnx_scores = session.run(None, {session.get_inputs()[0].name: x_hold.astype(np.float32)})[1][
        :, 1
    ]
    sk_scores = model.predict_proba(x_hold.astype(np.float32))[:, 1]
    worst = float(np.max(np.abs(onnx_scores - sk_scores)))
    if worst > ONNX_ATOL:
        raise ValueError(f"ONNX and scikit-learn disagree by {worst:.2e} > {ONNX_ATOL}")

    both = len(np.unique(y_hold)) == 2
    metrics = {
        "auc": float(roc_auc_score(y_hold, sk_scores)) if both else None,
        "log_loss": float(log_loss(y_hold, np.clip(sk_scores, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "brier": float(brier_score_loss(y_hold, sk_scores)),
        "positive_rate": float(y_hold.mean()),
        "onnx_max_abs_diff": worst,
    }
    train_scores = model.predict_proba(x_train.astype(np.float32))[:, 1]
    metadata = {
        "feature_names": list(feature_names),
        "model_type": type(model).__name__,
        "training_window": {
            "start": data.event_time.iloc[0].isoformat(),
            "end": data.event_time.iloc[cut - 1].isoformat(),
            "holdout_end": data.event_time.iloc[-1].isoformat(),
        },
        "rows": {"train": cut, "holdout": n - cut},
        "data_fingerprint": data.fingerprint,
        "holdout_metrics": metrics,
        "reference_histograms": {
            **{name: histogram(x_train[:, j]) for j, name in enumerate(feature_names)},
            "score": histogram(train_scores, np.linspace(0.0, 1.0, 21)),
        },
    }
    return TrainedModel(onx, metadata, x_hold, y_hold)
