"""Stream scoring: every accepted event is scored by the champion (and by the shadow
challenger, while there is one) and published with its id and role."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from kafka import KafkaConsumer
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from featflow.processes import start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from features.scoring_row import MERCHANT_DEFAULTS, SCORING_FEATURES, USER_INPUTS
from features.views import MERCHANT_ACTIVITY, MERCHANT_OUTCOMES
from inference.registry import ModelRegistry
from infra.predictions import decode_predictions
from infra.producer import publish
from infra.topics import ensure_topics
from tests.streams.pipeline_helpers import assert_clean_log, make_events, oracle


def _model(column: int) -> tuple[LogisticRegression, bytes]:
    rng = np.random.default_rng(column)
    x = rng.normal(size=(200, len(SCORING_FEATURES))).astype(np.float32)
    model = LogisticRegression().fit(x, (x[:, column] > 0).astype(int))
    # Scale-free coefficients keep scores away from 0/1 on real feature magnitudes.
    model.coef_ = model.coef_ / 1000.0
    blob = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17).SerializeToString()
    return model, blob


_DEFAULT = tuple(MERCHANT_DEFAULTS.tolist())


def _merchant_states(settings: Settings) -> dict[int, set[tuple[float, ...]]]:
    """Every (activity row, outcome row) combination each merchant's views were in: the
    offline rows of each view, and each view's defaults before its first row."""
    out: dict[int, set[tuple[float, ...]]] = {}
    views = []
    for view in (MERCHANT_ACTIVITY, MERCHANT_OUTCOMES):
        names = [s.name for s in view.specs]
        folder = settings.stores.view_dir(view.name)
        rows = pd.read_parquet(folder) if any(folder.glob("*.parquet")) else None
        by = {} if rows is None else {
            int(m): {tuple(map(float, r)) for r in g[names].to_numpy()}
            for m, g in rows.groupby("merchant_id")
        }  # fmt: skip
        views.append((by, tuple(0.0 for _ in names)))
    (acts, act0), (outs, out0) = views
    for m in set(acts) | set(outs):
        for a in acts.get(m, set()) | {act0}:
            for o in outs.get(m, set()) | {out0}:
                out.setdefault(m, set()).add(a + o)
    return out


def test_worker_scores_every_event_with_champion_and_shadow(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"stream_scoring": True})
    model, blob = _model(0)  # a user feature decides
    challenger, challenger_blob = _model(SCORING_FEATURES.index("merchant_txns_24h"))
    registry = ModelRegistry(settings.stores.models_dir)
    registry.promote(registry.register(blob, {"feature_names": SCORING_FEATURES}).version)
    shadow = registry.register(challenger_blob, {"feature_names": SCORING_FEATURES}).version
    registry.start_shadow(shadow, SCORING_FEATURES)

    events = make_events(2000, users=50, seed=21)
    expected = oracle(events)
    ensure_topics(settings.kafka, settings.topics)
    records = list(events.records())
    publish(settings.kafka, settings.topics.events, records[:1000])
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_caught_up(settings, [worker], timeout=180)  # the merchant views hold the first half
        publish(settings.kafka, settings.topics.events, records[1000:])
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
    states = _merchant_states(settings)
    merchant_of = dict(zip(events.event_id, events.merchant_id.tolist(), strict=True))
    for role, version, scorer in (("champion", "v0001", model), ("shadow", "v0002", challenger)):
        mine = [json.loads(v) for v in raw]
        records = {r["event_id"]: r for r in mine if r["role"] == role}
        assert sorted(records) == sorted(events.event_id)
        assert {r["model_version"] for r in records.values()} == {version}
        ids = list(records)
        rows = np.array([[records[i]["features"][n] for n in SCORING_FEATURES] for i in ids])
        # the user's features are the stream's own row for the event
        users = len(USER_INPUTS)
        np.testing.assert_allclose(rows[:, :users], frame.loc[ids, list(USER_INPUTS)], rtol=1e-9)
        # the merchant's are a state its merchant views were in (or a new merchant's)
        for i, row in zip(ids, rows[:, users:].tolist(), strict=True):
            assert tuple(row) in states.get(merchant_of[i], set()) | {_DEFAULT}, (i, row)
        want = scorer.predict_proba(rows.astype(np.float32))[:, 1]
        got = np.array([records[i]["score"] for i in ids])
        np.testing.assert_allclose(got, want, atol=1e-5)
    shadow_rows = [json.loads(v) for v in raw]
    known = [r["features"]["merchant_txns_24h"] > 0 for r in shadow_rows]
    assert np.mean(known) > 0.2  # most events are scored with what their merchant did
    assert {(p.event_id, p.role): p.event_time for p in decoded} == {
        (e, role): t
        for e, t in zip(events.event_id, events.event_time_ms.tolist(), strict=True)
        for role in ("champion", "shadow")
    }
