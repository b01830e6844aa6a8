"""Training: point-in-time features, scikit-learn, ONNX export, checks.

:func:`training_set_by_event` joins each label to its own event's offline row (features
computed as of that event, exactly what stream scoring saw) with a hash join in DuckDB, and
to its merchant's rows as of just before the event with a sort-merge ``ASOF JOIN``:
O(N log N) and memory bounded by N, whatever the busiest entity holds. Feast's
``get_historical_features`` reads the same rows (tests/inference/feast_training.py proves
it) but its file store joins each entity's labels with all its rows, so its cost grows with
the square of the busiest entity's rows: ``featflow train`` and the trainer use the join.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.feast_repo import JOIN_KEY, TIMESTAMP_FIELD
from features.scoring_row import MERCHANT_DEFAULTS, MERCHANT_KEY, SCORING_FEATURES, USER_INPUTS
from features.views import MERCHANT_VIEWS, View
from inference.reference import histogram

if TYPE_CHECKING:
    pass

#: DuckDB's memory for the training-set join; it spills past it (measured: 1M labelled
#: events, benchmarks/training_set.py)
MEMORY_LIMIT = "600MB"
ONNX_ATOL = 1e-5  # ONNX vs the fitted model: probability agreement required before registering


@dataclass(frozen=True)
class TrainingSet:
    """Point-in-time feature rows with their labels, in event-time order."""

    features: np.ndarray  # float64 [n, F], in SCORING_FEATURES order
    label: np.ndarray  # int8 [n]
    event_time: pd.Series  # UTC timestamps, for the time-ordered holdout split
    fingerprint: str  # sha256 of the rows, so a model names the data it was trained on
    entity: np.ndarray | None = None  # int64 [n] user of each row (weights drift references)
    # float64 [n]: a known true probability of each label (synthetic data: the generator's),
    # so training can report the best AUC any model could reach on its holdout
    truth: np.ndarray | None = None


def training_set_by_event(
    offline_dir: Path, labels: pd.DataFrame, *, history_ms: int | None = None
) -> TrainingSet:
    """Each label (columns ``event_id``, ``label``, optional ``probability``: a known true
    probability, e.g. the generator's) joined to its event's offline row, and to its
    merchant's rows as of just before the event; with ``history_ms``, only events within
    that much event time of the newest labelled one.

    ``offline_dir`` is the user view's folder; the merchant views' folders are its siblings
    (the offline store's layout, ``$FEATFLOW_HOME/offline/<view>``). Each merchant view is
    joined as of the event (DuckDB ``ASOF JOIN``: the merchant's newest row strictly before
    the event's time, a sort-merge join): a label-derived merchant feature counts only
    labels whose ``outcome_time`` came before the event. A merchant with no row by then
    reads as the views' defaults, as it does online.

    Replayed offline rows (the same source record written twice after a restart) count
    once, by their source ``kafka_partition, kafka_offset``. Rows come in event-time order
    (ties by event id), so the holdout of :func:`train` is the most recent one.
    """
    import duckdb

    if not any(offline_dir.glob("*.parquet")):
        raise ValueError(f"no offline feature rows in {offline_dir}")
    # DuckDB spills its sorts and joins past MEMORY_LIMIT (a scratch folder), so the process
    # stays within about 2 GB at 1M labelled events whatever the rows hold
    with tempfile.TemporaryDirectory(prefix="featflow-join-") as spill:
        con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "temp_directory": spill})
        try:
            truth = "probability" in labels.columns
            columns = ["event_id", "label", *(["probability"] if truth else [])]
            con.register("labels", labels[columns])
            for view in MERCHANT_VIEWS:
                rows_sql = _merchant_rows(offline_dir.parent, view)
                con.execute(f"CREATE VIEW {view.name} AS {rows_sql}")
            table = con.sql(_join_sql(offline_dir, truth, history_ms)).to_arrow_table()
        finally:
            con.close()
    features = np.column_stack(
        [table.column(n).to_numpy().astype(np.float64, copy=False) for n in SCORING_FEATURES]
    )
    keep = ~np.isnan(features).any(axis=1)
    if not keep.all():
        features = features[keep]
    label = table.column("label").to_numpy()[keep].astype(np.int8)
    digest = hashlib.sha256(features.tobytes() + label.tobytes()).hexdigest()
    times = pd.Series(pd.to_datetime(table.column("t").to_numpy()[keep], unit="ms", utc=True))
    users = table.column(JOIN_KEY).to_numpy()[keep].astype(np.int64)
    known = (
        table.column("probability").to_numpy(zero_copy_only=False)[keep].astype(np.float64)
        if truth
        else None
    )
    return TrainingSet(features, label, times, digest, users, known)


def _join_sql(offline_dir: Path, truth: bool, history_ms: int | None) -> str:
    """The training set's query: labels joined to their events' rows by event id, then to
    their merchants' rows strictly before each event (as-of)."""
    user = ", ".join(f'r."{n}"' for n in USER_INPUTS)
    pairs = [(i, s) for i, v in enumerate(MERCHANT_VIEWS) for s in v.specs]
    merchant = ", ".join(
        f'coalesce(m{i}."{s.name}", {float(MERCHANT_DEFAULTS[k])}) AS "{s.name}"'
        for k, (i, s) in enumerate(pairs)
    )
    joins = "\n".join(
        f"ASOF LEFT JOIN {v.name} m{i} ON r.{MERCHANT_KEY} = m{i}.merchant_id "
        f"AND r.{TIMESTAMP_FIELD} > m{i}.{TIMESTAMP_FIELD}"
        for i, v in enumerate(MERCHANT_VIEWS)
    )
    window = (
        "" if history_ms is None
        else f"WHERE t >= (SELECT max(t) FROM joined) - {int(history_ms)}"
    )  # fmt: skip
    return f"""
        WITH rows AS (
            SELECT * FROM read_parquet('{offline_dir}/*.parquet')
            QUALIFY row_number() OVER (
                PARTITION BY event_id ORDER BY kafka_partition, kafka_offset) = 1
        ), labelled AS (
            SELECT r.*, l.label::TINYINT AS label,
                   {"l.probability::DOUBLE" if truth else "NULL::DOUBLE"} AS probability
            FROM rows r JOIN labels l USING (event_id)
        ), joined AS (
            SELECT {user}, {merchant}, r.label, r.probability, r.{JOIN_KEY},
                   epoch_ms(r.{TIMESTAMP_FIELD}) AS t, r.event_id
            FROM labelled r
            {joins}
        )
        SELECT * EXCLUDE (event_id) FROM joined {window} ORDER BY t, event_id
    """


def _merchant_rows(root: Path, view: View) -> str:
    """SQL for a merchant view's offline rows: one per source record, and one per merchant
    and millisecond (the last by source coordinates), so the as-of join is deterministic.
    No rows yet (no part files) is an empty relation of the same columns."""
    folder = root / view.name
    names = ", ".join(f'"{s.name}"' for s in view.specs)
    if not folder.exists() or not any(folder.glob("*.parquet")):
        typed = ", ".join(f'NULL::DOUBLE AS "{s.name}"' for s in view.specs)
        return (
            f"SELECT NULL::BIGINT AS merchant_id, NULL::TIMESTAMPTZ AS {TIMESTAMP_FIELD}, "
            f"{typed} WHERE false"
        )
    return f"""
        SELECT merchant_id, {TIMESTAMP_FIELD}, {names} FROM (
            SELECT * FROM read_parquet('{folder}/*.parquet')
            QUALIFY row_number() OVER (
                PARTITION BY kafka_partition, kafka_offset ORDER BY event_id) = 1
        )
        QUALIFY row_number() OVER (
            PARTITION BY merchant_id, {TIMESTAMP_FIELD}
            ORDER BY kafka_partition DESC, kafka_offset DESC) = 1
    """


def fit_model(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Any:
    """Gradient-boosted trees (LightGBM): 150 trees of depth 3 at learning rate 0.05.

    Why LightGBM: scikit-learn's GradientBoostingClassifier fit 800k rows x 18 features in
    675 s here (benchmarks/training_set.py), LightGBM the same shape of model in ~15 s with
    the same holdout AUC (0.780 vs 0.774 on 80k rows of the generator's data, ceiling
    0.783); HistGradientBoosting does not convert to ONNX with the pinned skl2onnx.
    Learning rate 0.05: at 0.1 the trees fit the label noise (labels are ~10 % positive
    draws) and lose 0.01-0.04 AUC. Deterministic for a seed (row-wise histograms, fixed
    threads).

    ONNX compares float32 inputs with float32 thresholds; LightGBM splits at the double
    midpoint between two neighbouring training values, which float32 cannot always hold, so
    a value equal to the rounded threshold would take the other branch (seen: 7e-4 on a
    probability at 1M rows). Fitting on values rounded down to 16 significant bits (~5
    decimal digits) makes every such midpoint a float32, and ONNX then agrees with the
    model on every input (checked in :func:`train`).
    """
    import lightgbm as lgb

    x = (np.asarray(x, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFFFF00)).view(np.float32)

    model = lgb.LGBMClassifier(
        n_estimators=150, learning_rate=0.05, max_depth=3, num_leaves=8, random_state=seed,
        deterministic=True, force_row_wise=True, n_jobs=2, verbose=-1,
    )  # fmt: skip
    return model.fit(x, y)


def to_onnx(model: Any, n_features: int) -> bytes:
    """The model as ONNX (probabilities as a plain tensor, no zipmap) for onnxruntime."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    onx = convert_lightgbm(
        model, initial_types=[("input", FloatTensorType([None, n_features]))],
        zipmap=False, target_opset=15,
    )  # fmt: skip
    for out in onx.graph.output:  # the converter declares batch size 1; leave it open
        out.type.tensor_type.shape.dim[0].Clear()
    return onx.SerializeToString()


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
    feature_names: Sequence[str] = SCORING_FEATURES,
) -> TrainedModel:
    """Fit on the older rows, evaluate on the newest ``holdout_fraction``, export ONNX."""
    import onnxruntime as ort
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    n = len(data.label)
    cut = int(n * (1 - holdout_fraction))
    if cut < 50 or n - cut < 20 or len(np.unique(data.label[:cut])) < 2:
        raise ValueError(f"not enough labelled rows to train and hold out ({n} rows)")
    x_train, y_train = data.features[:cut], data.label[:cut]
    x_hold, y_hold = data.features[cut:], data.label[cut:]
    model = fit_model(x_train, y_train, seed)
    onx = to_onnx(model, x_train.shape[1])

    session = ort.InferenceSession(onx, providers=["CPUExecutionProvider"])
    onnx_scores = session.run(None, {session.get_inputs()[0].name: x_hold.astype(np.float32)})[1][
        :, 1
    ]
    sk_scores = model.predict_proba(x_hold.astype(np.float32))[:, 1]
    worst = float(np.max(np.abs(onnx_scores - sk_scores)))
    if worst > ONNX_ATOL:
        raise ValueError(f"ONNX and the fitted model disagree by {worst:.2e} > {ONNX_ATOL}")

    both = len(np.unique(y_hold)) == 2
    metrics = {
        "auc": float(roc_auc_score(y_hold, sk_scores)) if both else None,
        # the AUC of the known true probability on the same holdout rows: the best any model
        # could reach (only when the labels carry one)
        "ceiling_auc": (
            float(roc_auc_score(y_hold, data.truth[cut:]))
            if both and data.truth is not None
            else None
        ),
        "log_loss": float(log_loss(y_hold, np.clip(sk_scores, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "brier": float(brier_score_loss(y_hold, sk_scores)),
        "positive_rate": float(y_hold.mean()),
        "onnx_max_abs_diff": worst,
    }
    train_scores = model.predict_proba(x_train.astype(np.float32))[:, 1]
    users = None if data.entity is None else data.entity[:cut]
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
            **{
                name: histogram(x_train[:, j], entities=users)
                for j, name in enumerate(feature_names)
            },
            "score": histogram(train_scores, entities=users),
        },
    }
    return TrainedModel(onx, metadata, x_hold, y_hold)
