"""End to end: kafka-python producer -> Tansu -> featflow worker -> Feast, checked by an oracle.

Features are read back only through Feast's own SDK (``get_online_features``,
``get_historical_features``) and compared with pandas time-based rolling.
"""

from __future__ import annotations

import collections
import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featflow.processes import start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from features.backfill import backfill
from features.event_files import from_records
from features.feast_repo import FEATURE_VIEW, open_store
from features.reader import read_online
from features.spec import FEATURE_NAMES
from infra.process import free_port
from infra.producer import publish
from infra.topics import ensure_topics
from tests.streams.pipeline_helpers import (
    assert_clean_log,
    make_events,
    oracle,
    read_dead_letters,
    read_offline,
)

RTOL = 1e-9


def _bad_records(events, now_ms: int) -> list[tuple[bytes, bytes, str]]:
    """(key, value, expected reason): malformed input and one late event, among good ones."""
    user = int(events.user_id[-1])
    newest = int(events.event_time_ms[events.user_id == user].max())
    late = {
        "event_id": "late-1",
        "user_id": user,
        "merchant_id": 1,
        "amount": 1.0,
        "event_time": newest - 120_000,  # 2 min behind with 60 s allowed lateness
    }
    base = {"event_id": "b", "user_id": 5, "merchant_id": 1, "amount": 1.0, "event_time": now_ms}
    return [
        (b"5", b"{not json", "malformed_json"),
        (b"5", json.dumps({**base, "amount": -3}).encode(), "out_of_range"),
        (b"5", json.dumps({**base, "user_id": "5"}).encode(), "schema"),
        (b"5", json.dumps({**base, "event_time": "soon"}).encode(), "bad_timestamp"),
        (
            b"5",
            json.dumps({**base, "event_time": now_ms + 3 * 86_400_000}).encode(),
            "timestamp_in_future",
        ),
        (b"6", json.dumps(base).encode(), "bad_key"),
        # ~1,000 levels deep: the decoder's RecursionError once crash-looped the worker
        (
            b"5",
            json.dumps(base).encode()[:-1] + b', "x": ' + b"[" * 1000 + b"]" * 1000 + b"}",
            "malformed_json",
        ),
        # finite, but two of them overflowed the window sums to inf (served as null)
        (b"5", json.dumps({**base, "amount": 1e308}).encode(), "out_of_range"),
        (b"5", json.dumps({**base, "event_id": "c", "amount": 1e308}).encode(), "out_of_range"),
        (str(user).encode(), json.dumps(late).encode(), "late"),
    ]


def _scrape(port: int, want_dead_letters: int, timeout: float = 30.0) -> dict[str, float]:
    """The worker's /metrics as {sample: value}, once the DLQ watcher has seen every letter."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        observed = sum(v for k, v in samples.items() if k.startswith("featflow_dead_letters_total"))
        if observed >= want_dead_letters or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_stream_to_feast_matches_oracle(
    settings: Settings, store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if store == "redis":
        settings = settings.model_copy(
            update={"online_store": request.getfixturevalue("redis_url")}
        )
    events = make_events(4000, users=150, seed=3)
    expected = oracle(events)
    now_ms = int(events.event_time_ms.max())
    bad = _bad_records(events, now_ms)

    ensure_topics(settings.kafka, settings.topics)
    records = list(events.records())
    publish(
        settings.kafka,
        settings.topics.events,
        records[:2000] + [(k, v) for k, v, _ in bad[:-1]] + records[2000:],
    )
    publish(settings.kafka, settings.topics.events, [(k, v) for k, v, _ in bad[-1:]])
    port = free_port()
    settings = settings.model_copy(update={"worker_web_port": port})
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_caught_up(settings, [worker], timeout=180)
        metrics = _scrape(port, want_dead_letters=len(bad))
    finally:
        stop_process(worker)

    assert_clean_log(tmp_path / "worker.log")
    # Counters on /metrics account for every record.
    assert metrics["featflow_events_accepted_total"] == len(events)
    # what the states hold, against pandas: every user and merchant seen (nothing expired)
    frame = pd.DataFrame({"user_id": events.user_id, "merchant_id": events.merchant_id})
    assert metrics['featflow_state_entities{state="users"}'] == frame["user_id"].nunique()
    assert metrics['featflow_state_entities{state="merchants"}'] == frame["merchant_id"].nunique()
    assert metrics['featflow_state_bytes{state="users"}'] >= 24 * len(events)  # 24 B a row
    by_reason = collections.Counter(reason for _, _, reason in bad)
    letters = {k: v for k, v in metrics.items() if k.startswith("featflow_dead_letters_total")}
    assert letters == {
        f'featflow_dead_letters_total{{reason="{r}",topic="{settings.events_topic}"}}': n
        for r, n in by_reason.items()
    }

    # Online: every user's newest row, through Feast.
    latest = expected.latest_per_user()
    got = read_online(settings.stores, latest.index.tolist()).set_index("user_id")
    np.testing.assert_allclose(
        got[list(FEATURE_NAMES)].to_numpy(float),
        latest[list(FEATURE_NAMES)].to_numpy(float),
        rtol=RTOL,
    )
    unknown = read_online(settings.stores, [-1])
    assert unknown[list(FEATURE_NAMES)].isna().all(axis=None)

    # Dead letters: exactly the bad records, each with its reason and original bytes.
    dead = read_dead_letters(settings, expected=len(bad))
    assert sorted((d["featflow.reason"], d["value"]) for d in dead) == sorted(
        (reason, value) for _, value, reason in bad
    )
    assert all(int(d["featflow.source.offset"]) >= 0 for d in dead)

    # Offline: one row per accepted event, equal to the oracle.
    offline = read_offline(settings).set_index("event_id").loc[events.event_id]
    np.testing.assert_allclose(
        offline[list(FEATURE_NAMES)].to_numpy(float), expected.features, rtol=RTOL
    )

    # Offline through Feast: point-in-time rows at a sample of event times.
    frame = expected.frame()
    unique = frame.drop_duplicates(["user_id", "event_time_ms"], keep=False).sample(
        300, random_state=0
    )
    entity_df = pd.DataFrame(
        {
            "user_id": unique["user_id"].to_numpy(),
            "event_timestamp": pd.to_datetime(unique["event_time_ms"], unit="ms", utc=True),
        }
    )
    hist = (
        open_store(settings.stores)
        .get_historical_features(
            entity_df=entity_df, features=[f"{FEATURE_VIEW}:{n}" for n in FEATURE_NAMES]
        )
        .to_df()
    )
    hist["event_time_ms"] = hist["event_timestamp"].astype("int64") // 1_000_000
    merged = unique.merge(hist, on=["user_id", "event_time_ms"], suffixes=("", "_feast"))
    assert len(merged) == len(unique)
    np.testing.assert_allclose(
        merged[[f"{n}_feast" for n in FEATURE_NAMES]].to_numpy(float),
        merged[list(FEATURE_NAMES)].to_numpy(float),
        rtol=RTOL,
    )

    # Backfill over the same events gives exactly the stream's rows.
    result = backfill(from_records([v for _, v in records]), lateness_ms=60_000)
    back = result.table.to_pandas().set_index("event_id").loc[events.event_id]
    assert result.rejected == []
    assert (back[list(FEATURE_NAMES)].to_numpy() == offline[list(FEATURE_NAMES)].to_numpy()).all()
