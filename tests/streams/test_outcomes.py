"""Outcomes: stored by the worker, bad ones dead-lettered, and used to train from the store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from featflow.processes import start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from inference.registry import ModelRegistry
from inference.workflow import train_and_register
from streams.generator import generate_outcomes
from streams.outcomes import decode_outcomes
from streams.producer import publish
from streams.topics import ensure_topics
from tests.streams.pipeline_helpers import assert_clean_log, make_events, read_dead_letters

NOW = 1_767_225_600_000


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"nope", "malformed_json"),
        (b'{"event_id": "e", "user_id": 1, "label": 2, "outcome_time": 1767225600000}', "schema"),
        (b'{"event_id": "e", "user_id": 1, "label": 1}', "schema"),
        (b'{"event_id": "e", "user_id": 1, "label": 1, "outcome_time": "x"}', "bad_timestamp"),
        (
            b'{"event_id": "e", "user_id": 1, "label": 1, "outcome_time": 5}',
            "timestamp_before_2000",
        ),
        (
            b'{"event_id": "", "user_id": 1, "label": 1, "outcome_time": 1767225600000}',
            "out_of_range",
        ),
    ],
)
def test_bad_outcomes_get_reasons(raw: bytes, reason: str) -> None:
    good = b'{"event_id": "g", "user_id": 2, "label": 0, "outcome_time": "2026-01-01T00:00:00Z"}'
    table, dead = decode_outcomes([good, raw], partitions=[0, 0], offsets=[0, 1], now_ms=NOW)
    assert table.column("event_id").to_pylist() == ["g"]
    assert [(d.reason.value, d.offset) for d in dead] == [(reason, 1)]


def test_outcomes_stream_to_training(settings: Settings, tmp_path: Path) -> None:
    events = make_events(6000, users=200, seed=31)
    outcomes = generate_outcomes(events, seed=31, label_delay_ms=60_000)
    bad = [
        b"{broken",
        json.dumps({"event_id": "x", "user_id": 1, "label": 7, "outcome_time": NOW}).encode(),
    ]
    ensure_topics(settings)
    publish(settings, events.records())
    publish(
        settings, [*outcomes.records(), *((b"1", v) for v in bad)], topic=settings.outcomes_topic
    )
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_caught_up(settings, [worker], timeout=180)
        deadline = time.monotonic() + 60
        stored = 0
        while stored < len(events) and time.monotonic() < deadline:
            time.sleep(0.5)
            if any(settings.outcomes_dir.glob("*.parquet")):
                stored = len(pd.read_parquet(settings.outcomes_dir))
    finally:
        stop_process(worker)
    assert_clean_log(tmp_path / "worker.log")
    frame = pd.read_parquet(settings.outcomes_dir)
    assert sorted(frame["event_id"].unique()) == sorted(events.event_id)
    dead = read_dead_letters(
        settings.model_copy(update={"events_topic": settings.outcomes_topic}), expected=2
    )
    assert sorted(d["featflow.reason"] for d in dead) == ["malformed_json", "schema"]

    report = train_and_register(settings)  # labels from the store, features via Feast
    assert report.promoted and report.version == "v0001"
    assert ModelRegistry(settings.models_dir).champion_version() == "v0001"
    assert report.metrics["auc"] > 0.55
