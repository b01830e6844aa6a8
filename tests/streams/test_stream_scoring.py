"""Stream scoring: every accepted event is scored by the champion and published with its id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from featflow.processes import start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from features.spec import FEATURE_NAMES
from inference.registry import ModelRegistry
from infra.predictions import decode_predictions
from infra.producer import publish
from infra.topics import ensure_topics
from tests.streams.pipeline_helpers import assert_clean_log, make_events, oracle


def test_worker_scores_every_event(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"stream_scoring": True})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, len(FEATURE_NAMES))).astype(np.float32)
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    # Scale-free coefficients keep scores away from 0/1 on real feature magnitudes.
    model.coef_ = model.coef_ / 1000.0
    blob = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17).SerializeToString()
    registry = ModelRegistry(settings.stores.models_dir)
    registry.promote(registry.register(blob, {"feature_names": FEATURE_NAMES}).version)

    events = make_events(2000, users=50, seed=21)
    expected = oracle(events)
    ensure_topics(settings.kafka, settings.topics)
    publish(settings.kafka, settings.topics.events, events.records())
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_caught_up(settings, [worker], timeout=180)
    finally:
        stop_process(worker)

    assert_clean_log(tmp_path / "worker.log")
    consumer = KafkaConsumer(
        settings.predictions_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    raw = [m.value for m in consumer]
    records = {r["event_id"]: r for r in (json.loads(v) for v in raw)}
    consumer.close()
    decoded, dead = decode_predictions(raw, partitions=[0] * len(raw), offsets=[0] * len(raw))
    assert not dead and len(decoded) == len(raw)  # what the monitor will read back
    assert {p.event_id: p.event_time for p in decoded} == dict(
        zip(events.event_id, events.event_time_ms.tolist(), strict=True)
    )
    assert sorted(records) == sorted(events.event_id)
    frame = expected.frame().set_index("event_id")
    ids = list(records)
    want = model.predict_proba(frame.loc[ids, FEATURE_NAMES].to_numpy(np.float32))[:, 1]
    got = np.array([records[i]["score"] for i in ids])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert {r["model_version"] for r in records.values()} == {"v0001"}
