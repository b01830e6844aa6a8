"""Outcomes: stored by the worker, bad ones dead-lettered, and used to train from the store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featflow.processes import start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from featflow.training import train_with
from inference.registry import ModelRegistry
from infra.outcomes import decode_outcomes
from infra.producer import publish
from infra.topics import ensure_topics
from streams.generator import generate_outcomes
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
        # ~1,000 levels deep in an unknown field: msgspec raises RecursionError
        (
            b'{"x": ' + b"[" * 1000 + b"]" * 1000 + b', "event_id": "e", "user_id": 1}',
            "malformed_json",
        ),
    ],
)
def test_bad_outcomes_get_reasons(raw: bytes, reason: str) -> None:
    good = b'{"event_id": "g", "user_id": 2, "label": 0, "outcome_time": "2026-01-01T00:00:00Z"}'
    table, dead = decode_outcomes([good, raw], partitions=[0, 0], offsets=[0, 1], now_ms=NOW)
    assert table.column("event_id").to_pylist() == ["g"]
    assert [(d.reason.value, d.offset) for d in dead] == [(reason, 1)]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=40,
)
_FIELDS = ["event_id", "user_id", "label", "outcome_time", "prediction_id", "other"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            _json.map(lambda v: json.dumps(v).encode()),
            st.dictionaries(st.sampled_from(_FIELDS), _json).map(lambda d: json.dumps(d).encode()),
            st.integers(1, 20_000).map(lambda d: b'{"x":' + b"[" * d + b"]" * d + b"}"),
        ),
        max_size=12,
    )
)
def test_generated_outcomes_of_any_shape_and_depth_are_judged(values: list[bytes]) -> None:
    n = len(values)
    table, dead = decode_outcomes(values, partitions=[0] * n, offsets=range(n), now_ms=NOW)
    assert table.num_rows + len(dead) == n
    assert sorted([*table.column("kafka_offset").to_pylist(), *(d.offset for d in dead)]) == list(
        range(n)
    )
    assert all(d.detail for d in dead)


def test_outcomes_stream_to_training(settings: Settings, tmp_path: Path) -> None:
    events = make_events(6000, users=200, seed=31)
    outcomes = generate_outcomes(events, seed=31, label_delay_ms=60_000)
    bad = [
        b"{broken",
        b'{"x": ' + b"[" * 1000 + b"]" * 1000 + b"}",  # once crashed the outcome agent
        json.dumps({"event_id": "x", "user_id": 1, "label": 7, "outcome_time": NOW}).encode(),
    ]
    ensure_topics(settings.kafka, settings.topics)
    publish(settings.kafka, settings.topics.events, events.records())
    publish(
        settings.kafka, settings.topics.outcomes, [*outcomes.records(), *((b"1", v) for v in bad)]
    )
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_caught_up(settings, [worker], timeout=180)
        deadline = time.monotonic() + 60
        stored = 0
        while stored < len(events) and time.monotonic() < deadline:
            time.sleep(0.5)
            if any(settings.stores.outcomes_dir.glob("*.parquet")):
                stored = len(pd.read_parquet(settings.stores.outcomes_dir))
    finally:
        stop_process(worker)
    assert_clean_log(tmp_path / "worker.log")
    frame = pd.read_parquet(settings.stores.outcomes_dir)
    assert sorted(frame["event_id"].unique()) == sorted(events.event_id)
    dead = read_dead_letters(
        settings.model_copy(update={"events_topic": settings.outcomes_topic}), expected=3
    )
    assert sorted(d["featflow.reason"] for d in dead) == ["malformed_json"] * 2 + ["schema"]

    report = train_with(settings)  # labels from the store, features via Feast
    assert report.promoted and report.version == "v0001"
    assert ModelRegistry(settings.stores.models_dir).champion_version() == "v0001"
    assert report.metrics["auc"] > 0.55
