"""Stream scoring: every accepted event is scored by the champion (and by the shadow
challenger, while there is one) and published with its id and role."""

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


def _model(column: int) -> tuple[LogisticRegression, bytes]:
    rng = np.random.default_rng(column)
    x = rng.normal(size=(200, len(FEATURE_NAMES))).astype(np.float32)
    model = LogisticRegression().fit(x, (x[:, column] > 0).astype(int))
    # Scale-free coefficients keep scores away from 0/1 on real feature magnitudes.
    model.coef_ = model.coef_ / 1000.0
    blob = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17).SerializeToString()
    return model, blob


def test_worker_scores_every_event_with_champion_and_shadow(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"stream_scoring": True})
    model, blob = _model(0)
    challenger, challenger_blob = _model(1)
    registry = ModelRegistry(settings.stores.models_dir)
    registry.promote(registry.register(blob, {"feature_names": FEATURE_NAMES}).version)
    shadow = registry.register(challenger_blob, {"feature_names": FEATURE_NAMES}).version
    registry.start_shadow(shadow, FEATURE_NAMES)

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
    consumer.close()
    decoded, dead = decode_predictions(raw, partitions=[0] * len(raw), offsets=[0] * len(raw))
    assert not dead and len(decoded) == len(raw)  # what the monitor will read back
    assert len(raw) == 2 * len(events)  # one prediction per event and role
    frame = expected.frame().set_index("event_id")
    for role, version, scorer in (("champion", "v0001", model), ("shadow", "v0002", challenger)):
        mine = [json.loads(v) for v in raw]
        records = {r["event_id"]: r for r in mine if r["role"] == role}
        assert sorted(records) == sorted(events.event_id)
        assert {r["model_version"] for r in records.values()} == {version}
        ids = list(records)
        want = scorer.predict_proba(frame.loc[ids, FEATURE_NAMES].to_numpy(np.float32))[:, 1]
        got = np.array([records[i]["score"] for i in ids])
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert {(p.event_id, p.role): p.event_time for p in decoded} == {
        (e, role): t
        for e, t in zip(events.event_id, events.event_time_ms.tolist(), strict=True)
        for role in ("champion", "shadow")
    }
