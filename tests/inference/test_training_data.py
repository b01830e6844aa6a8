"""The trainer's training set: each label joined to its own event's offline row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.backfill import backfill
from features.event_files import from_records
from features.feast_repo import apply_repo
from features.merchant_backfill import write_views
from features.offline import OfflineWriter
from features.scoring_row import MERCHANT_DEFAULTS, SCORING_FEATURES, USER_INPUTS
from features.views import MERCHANT_VIEWS
from inference.train import training_set_by_event
from infra.config import Stores
from streams.generator import generate_events, generate_outcomes
from tests.inference.feast_training import labelled_events, training_set

T0 = 1_767_225_600_000


def _written(tmp_path: Path, n: int, users: int, zipf: float | None = None, seed: int = 1):
    events = generate_events(n, users=users, start_ms=T0, mean_gap_ms=1000, seed=seed)
    if zipf is not None:  # heavy-tailed activity: a few users hold most rows
        rng = np.random.default_rng(seed)
        events.user_id[:] = np.minimum(rng.zipf(zipf, n), users)
    outcomes = generate_outcomes(events, seed=seed)
    table = backfill(from_records([v for _, v in events.records()]), lateness_ms=60_000).table
    offline = tmp_path / "offline"
    OfflineWriter(offline).write(table, tag="a")
    labels = pd.DataFrame({"event_id": outcomes.event_id, "label": outcomes.label})
    return offline, table, labels


def _zipf_merchants(events, seed: int = 0):
    """The events at 50 merchants of Zipf(1.6) popularity (the busiest takes ~40 %)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, 51) ** 1.6
    events.merchant_id[:] = rng.choice(50, size=len(events), p=weights / weights.sum()) + 1
    return events


def _merchant_oracle(root: Path, events: pd.DataFrame) -> np.ndarray:
    """The merchant columns by pandas: for each event (merchant_id, event_timestamp), each
    merchant view's newest row strictly before it (``merge_asof``, no exact matches), one
    row per source record and per merchant and millisecond (the last by source)."""
    out = []
    for view in MERCHANT_VIEWS:
        rows = pd.read_parquet(root / view.name)
        rows = rows.drop_duplicates(["kafka_partition", "kafka_offset"])
        rows = rows.sort_values(["kafka_partition", "kafka_offset"])
        rows = rows.drop_duplicates(["merchant_id", "event_timestamp"], keep="last")
        left = events.reset_index().sort_values("event_timestamp")
        joined = pd.merge_asof(
            left, rows.sort_values("event_timestamp"), on="event_timestamp", by="merchant_id",
            allow_exact_matches=False, direction="backward", suffixes=("", "_m"),
        ).sort_values("index")  # fmt: skip
        for spec in view.specs:
            out.append(joined[spec.name].astype(float).fillna(0.0).to_numpy())
    return np.column_stack(out)


def test_merchant_views_join_as_of_before_each_event(tmp_path: Path) -> None:
    """The merchant columns equal pandas' merge_asof on the same rows, and no label leaks:
    removing every label known at or after an event's time (the world as it was then)
    leaves that event's merchant features unchanged."""
    events = _zipf_merchants(generate_events(5000, users=80, start_ms=T0, mean_gap_ms=700, seed=7))
    outcomes = generate_outcomes(events, seed=7, label_delay_ms=600_000)
    table = backfill(from_records([v for _, v in events.records()]), lateness_ms=60_000).table
    labels = outcomes.table().to_pandas()
    offline = write_views(tmp_path / "all", table, labels, tag="a")
    data = training_set_by_event(offline, labels)
    users = len(USER_INPUTS)

    frame = table.to_pandas().merge(labels[["event_id"]], on="event_id")
    frame = frame.sort_values(["event_timestamp", "event_id"]).reset_index(drop=True)
    expected = _merchant_oracle(tmp_path / "all", frame[["merchant_id", "event_timestamp"]])
    np.testing.assert_array_equal(data.features[:, users:], expected)
    rate = SCORING_FEATURES.index("merchant_fraud_rate_7d")
    assert (data.features[:, rate] > 0).mean() > 0.3  # the label-derived feature is live

    # the world as of a few events' times: only labels known strictly before each
    times = frame["event_timestamp"].dt.as_unit("ms").astype("int64")
    for i in np.linspace(len(frame) // 4, len(frame) - 1, 5).astype(int).tolist():
        known = labels[labels["outcome_time"] < int(times[i])]
        then = write_views(tmp_path / f"at{i}", table, known, tag="a")
        past = training_set_by_event(then, labels)
        assert past.event_time.equals(data.event_time)  # the same labelled events, in order
        np.testing.assert_array_equal(past.features[i, users:], data.features[i, users:])
        if i < len(frame) - 1:  # and the check can fail: later rows did see the later labels
            assert (past.features[-1, users:] != data.features[-1, users:]).any()


def test_equals_a_pandas_merge_and_drops_replayed_rows(tmp_path: Path) -> None:
    offline, table, labels = _written(tmp_path, 4000, 60)
    # a replay after a restart writes the first 500 rows again, later offsets
    replay = table.slice(0, 500)
    replay = replay.set_column(
        replay.schema.get_field_index("kafka_offset"),
        "kafka_offset",
        pa.array(np.arange(10**6, 10**6 + 500), pa.int64()),
    )
    OfflineWriter(offline).write(replay, tag="b")
    labels = labels.sample(frac=0.7, random_state=2)  # not every event labelled
    data = training_set_by_event(offline, labels)

    frame = table.to_pandas().merge(labels, on="event_id")  # the oracle: one row per event
    frame = frame.sort_values(["event_timestamp", "event_id"])
    assert len(data.label) == len(labels)
    users = len(USER_INPUTS)
    np.testing.assert_array_equal(data.features[:, :users], frame[list(USER_INPUTS)].to_numpy())
    # no merchant view here: every merchant reads as new
    assert (data.features[:, users:] == MERCHANT_DEFAULTS).all()
    np.testing.assert_array_equal(data.label, frame["label"].to_numpy())
    assert list(data.event_time) == list(frame["event_timestamp"])


def test_history_keeps_the_recent_window_of_event_time(tmp_path: Path) -> None:
    offline, table, labels = _written(tmp_path, 3000, 40)
    data = training_set_by_event(offline, labels, history_ms=600_000)
    times = table.to_pandas()["event_timestamp"]
    expected = int((times >= times.max() - pd.Timedelta(minutes=10)).sum())
    assert len(data.label) == expected > 0
    assert data.event_time.min() >= times.max() - pd.Timedelta(minutes=10)


def test_same_rows_as_feast_historical_retrieval(tmp_path: Path) -> None:
    """Feast's point-in-time join at each event's time finds the same row (events in order,
    one per user and millisecond), so both training paths agree."""
    stores = Stores(tmp_path / "home", "sqlite")
    events = _zipf_merchants(generate_events(1500, users=30, start_ms=T0, mean_gap_ms=1000, seed=4))
    outcomes = generate_outcomes(events, seed=4, label_delay_ms=120_000)
    table = backfill(from_records([v for _, v in events.records()]), lateness_ms=0).table
    store = apply_repo(stores)
    labels = outcomes.table().to_pandas()
    offline = write_views(stores.home / "offline", table, labels, tag="a")
    assert offline == stores.offline_dir
    ours = training_set_by_event(stores.offline_dir, labels)
    feast = training_set(store, labelled_events(labels, table.to_pandas()))
    assert len(ours.label) == len(feast.label) > 1000
    np.testing.assert_allclose(ours.features, feast.features, rtol=0, atol=0)
    merchant = ours.features[:, len(USER_INPUTS) :]
    assert (merchant != MERCHANT_DEFAULTS).any(axis=1).mean() > 0.9  # merchants are known


_PEAK = """
import resource, sys
from pathlib import Path
import pandas as pd
from inference.train import training_set_by_event
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = training_set_by_event(Path(sys.argv[1]), pd.read_parquet(sys.argv[2]))
print(len(data.label), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def test_memory_does_not_follow_the_busiest_user(tmp_path: Path) -> None:
    """Zipf(1.6): the busiest user holds ~40 % of 30k rows. Feast's file store needed
    24 GB here (all pairs of that user's labels and rows); this join, in a process of its
    own, grows its peak resident memory by well under 300 MB."""
    offline, table, labels = _written(tmp_path, 30_000, 2000, zipf=1.6)
    users = table.column("user_id").to_numpy()
    assert np.bincount(users).max() > 0.3 * len(users)
    labels.to_parquet(tmp_path / "labels.parquet")
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(offline), str(tmp_path / "labels.parquet")],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert int(out[0]) == 30_000
    assert int(out[1]) * 1024 < 300e6, out  # ru_maxrss is in KiB on Linux


def test_no_offline_rows_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no offline feature rows"):
        training_set_by_event(tmp_path / "empty", pd.DataFrame({"event_id": [], "label": []}))
