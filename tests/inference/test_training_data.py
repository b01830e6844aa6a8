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
from features.offline import OfflineWriter
from features.spec import FEATURE_NAMES
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
    np.testing.assert_array_equal(data.features, frame[list(FEATURE_NAMES)].to_numpy())
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
    events = generate_events(1500, users=30, start_ms=T0, mean_gap_ms=1000, seed=4)
    outcomes = generate_outcomes(events, seed=4)
    table = backfill(from_records([v for _, v in events.records()]), lateness_ms=0).table
    store = apply_repo(stores)
    OfflineWriter(stores.offline_dir).write(table, tag="a")
    labels = pd.DataFrame({"event_id": outcomes.event_id, "label": outcomes.label})
    ours = training_set_by_event(stores.offline_dir, labels)
    feast = training_set(store, labelled_events(labels, table.to_pandas()))
    assert len(ours.label) == len(feast.label) > 1000
    np.testing.assert_allclose(ours.features, feast.features, rtol=0, atol=0)


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
