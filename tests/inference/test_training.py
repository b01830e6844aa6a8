"""Training data is point-in-time correct; models export to ONNX faithfully and learn."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from featflow.settings import Settings
from features.backfill import backfill
from features.event_files import from_records
from features.feast_repo import apply_repo
from features.merchant_backfill import write_views
from features.offline import OfflineWriter
from features.rows import offline_table
from features.scoring_row import MERCHANT_DEFAULTS, SCORING_FEATURES, USER_INPUTS
from features.spec import DEFAULT_FEATURES
from inference.train import train, training_set_by_event
from streams.generator import fraud_probability, generate_events, generate_outcomes
from tests.inference.feast_training import training_set

T0 = pd.Timestamp("2026-03-01T12:00:00Z")


def _offline_rows(rows: list[tuple[int, pd.Timestamp, float]]) -> pa.Table:
    """Offline rows whose every feature equals ``value`` (easy to recognise)."""
    users = np.array([r[0] for r in rows], dtype=np.int64)
    times = np.array([r[1].value // 1_000_000 for r in rows], dtype=np.int64)
    values = np.array([[r[2]] * len(DEFAULT_FEATURES) for r in rows], dtype=np.float64)
    return offline_table(
        DEFAULT_FEATURES,
        event_id=[f"e{i}" for i in range(len(rows))],
        entity_id=users,
        event_time_ms=times,
        features=values,
        partition=np.zeros(len(rows), dtype=np.int32),
        offset=np.arange(len(rows), dtype=np.int64),
    )


def test_point_in_time_against_hand_built_oracle(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = apply_repo(settings.stores)
    s = pd.Timedelta(seconds=1)
    # user 1 updates at T0, T0+10s, T0+20s; user 2 once at T0+5s.
    rows = [(1, T0, 1.0), (1, T0 + 10 * s, 2.0), (2, T0 + 5 * s, 7.0), (1, T0 + 20 * s, 3.0)]
    OfflineWriter(settings.stores.offline_dir).write(_offline_rows(rows[:2]), tag="a")
    OfflineWriter(settings.stores.offline_dir).write(_offline_rows(rows[2:]), tag="b")
    labels = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1, 2, 2],
            "event_timestamp": [
                T0 - s,  # before any value: no row
                T0,  # exactly at an update: that update
                T0 + 9 * s,  # between updates: the older one
                T0 + 10 * s,
                T0 + 19 * s,  # the T0+20s value was written after: must not leak
                T0 + 4 * s,  # no row
                T0 + 60 * s,
            ],
            "label": [0, 1, 0, 1, 0, 1, 0],
        }
    )
    labels["event_id"] = [f"q{i}" for i in range(len(labels))]
    data = training_set(store, labels)
    expected = [  # (time, feature value) as the oracle sees it, sorted by time
        (T0, 1.0),
        (T0 + 9 * s, 1.0),
        (T0 + 10 * s, 2.0),
        (T0 + 19 * s, 2.0),
        (T0 + 60 * s, 7.0),
    ]
    assert list(data.event_time) == [t for t, _ in expected]
    merchant = MERCHANT_DEFAULTS.tolist()  # no merchant rows: a new merchant's defaults
    want = [[v] * len(USER_INPUTS) + merchant for _, v in expected]
    np.testing.assert_array_equal(data.features, want)
    assert data.label.tolist() == [1, 0, 1, 0, 0]


def test_train_learns_the_hidden_rule_and_onnx_agrees(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    events = generate_events(12_000, users=300, start_ms=1_767_225_600_000, mean_gap_ms=2_000)
    outcomes = generate_outcomes(events, seed=2)
    result = backfill(from_records([v for _, v in events.records()]), lateness_ms=60_000)
    labels = outcomes.table().to_pandas()
    offline = write_views(settings.stores.home / "offline", result.table, labels, tag="b")
    data = training_set_by_event(offline, labels)
    model = train(data)

    metrics = model.metadata["holdout_metrics"]
    assert metrics["onnx_max_abs_diff"] <= 1e-5
    # The hidden rule itself (the ceiling) scores AUC ~0.80 on this holdout; chance is 0.5.
    truth = fraud_probability(events)[-len(model.holdout_label) :]
    ceiling = roc_auc_score(model.holdout_label, truth)
    assert ceiling > metrics["auc"] > ceiling - 0.06, (metrics, ceiling)
    assert model.metadata["rows"]["train"] + model.metadata["rows"]["holdout"] == len(events)
    hist = model.metadata["reference_histograms"]
    assert set(hist) == {*SCORING_FEATURES, "score"}
    # every user weighs at most 2 % of the reference: the busiest users' rows count less
    users = pd.Series(data.entity[: model.metadata["rows"]["train"]])
    per_user = users.value_counts().to_numpy(np.float64)
    cap = max(1.0, 0.02 * len(users))
    expected = float(np.minimum(per_user, cap).sum())
    assert hist["score"]["entity_share"] == 0.02
    assert sum(hist["score"]["counts"]) == pytest.approx(expected, rel=1e-9)
    assert expected < len(users)  # the generator's users are skewed


# The features the project had before this vocabulary (windows of the user alone): nothing
# about the transaction being scored, its merchant, or a typical amount to compare it with.
WINDOW_ONLY = (
    "txn_count_5m", "txn_count_1h", "txn_count_24h", "amount_sum_1h", "amount_sum_24h",
    "amount_mean_24h", "amount_std_24h", "amount_max_1h", "merchant_distinct_24h",
    "seconds_since_last_txn", "amount_ewm_mean_1h",
)  # fmt: skip


def test_the_feature_vocabulary_beats_window_features_alone(tmp_path: Path) -> None:
    """Fresh data (another seed, Zipf users): the default features come within 0.04 AUC of
    the generator's own probability and beat the window-only features by a clear margin."""
    events = generate_events(
        30_000, users=800, start_ms=1_767_225_600_000, mean_gap_ms=1_000, seed=11, zipf=1.3
    )
    outcomes = generate_outcomes(events, seed=11)
    result = backfill(from_records([v for _, v in events.records()]), lateness_ms=60_000)
    labels = outcomes.table().to_pandas()
    offline = write_views(tmp_path, result.table, labels, tag="backfill")
    data = training_set_by_event(offline, labels)
    full = train(data).metadata["holdout_metrics"]["auc"]
    cols = [SCORING_FEATURES.index(n) for n in WINDOW_ONLY]
    window_only = dataclasses.replace(data, features=data.features[:, cols])
    base = train(window_only, feature_names=WINDOW_ONLY).metadata["holdout_metrics"]["auc"]

    n_hold = len(data.label) - int(len(data.label) * 0.8)
    by_id = dict(zip(events.event_id, fraud_probability(events), strict=True))
    ids = pd.read_parquet(offline, columns=["event_id", "event_timestamp"])
    ids = ids.sort_values(["event_timestamp", "event_id"])["event_id"].to_numpy()[-n_hold:]
    ceiling = roc_auc_score(data.label[-n_hold:], [by_id[i] for i in ids])
    assert full > ceiling - 0.04, (full, ceiling)
    assert full > base + 0.05, (full, base)
