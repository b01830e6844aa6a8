"""The monitor and its default retraining policy on the real broker, over a skewed
generated world (Zipf users: the busiest holds a sixth of the events) scored by a champion
trained on it: a stable stream never fires, a covariate shift fires the drift rule soon
after the change, and a concept drift (labels change, features do not) fires the quality
rule and not the drift rule.

A champion is trained once on day 1.5-2.5 of event time (every 24 h window full); each
scenario then streams day 2.5-4 as predictions (features and score, as stream scoring
publishes them) and their labels, a chunk at a time, with a snapshot after every chunk, so
the policy sees the stream as it would live."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kafka import KafkaConsumer, TopicPartition

from featflow.settings import Settings
from features.backfill import backfill
from features.event_files import from_records
from features.offline import OfflineWriter
from features.scoring_row import MERCHANT_DEFAULTS, SCORING_FEATURES, scoring_rows
from features.spec import FEATURE_NAMES
from inference.onnx_model import load_model
from inference.registry import ModelRegistry
from inference.retraining import Request, Retrainer, RetrainSettings
from infra.config import Stores
from infra.outcomes import decode_outcomes
from infra.producer import publish
from infra.topics import ensure_topics
from streams.generator import generate_events, generate_outcomes
from streams.monitor import Monitor

T0 = 1_767_225_600_000
DAY = 86_400_000
GAP_MS = 8_640  # 10,000 events a day
N = 40_000  # four days
TRAIN = (T0 + DAY * 3 // 2, T0 + DAY * 5 // 2)
CHANGE = TRAIN[1]  # the scenarios begin where training data ends
CHUNK = 500  # events per chunk, one snapshot after each
USERS = 2000
enc = msgspec.json.Encoder()


def _world(shift: bool, concept: bool) -> tuple[pa.Table, pa.Table]:
    """Feature rows (as of each event) and labels; before ``CHANGE`` every world is the same."""
    events = generate_events(
        N, users=USERS, start_ms=T0, mean_gap_ms=GAP_MS, seed=5,
        change_ms=CHANGE, amount_factor=1.8 if shift else 1.0,
    )  # fmt: skip
    outcomes = generate_outcomes(events, seed=5, change_ms=CHANGE if concept else None)
    rows = backfill(from_records([v for _, v in events.records()]), lateness_ms=60_000).table
    values = [v for _, v in outcomes.records()]
    labels, dead = decode_outcomes(
        values, partitions=[0] * len(values), offsets=list(range(len(values)))
    )
    assert not dead
    return rows, labels


def _between(table: pa.Table, column: str, lo: int, hi: int) -> pa.Table:
    t = pc.cast(table.column(column), pa.int64())
    return table.filter(pc.and_(pc.greater_equal(t, lo), pc.less(t, hi)))


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose champion was trained on the shared day 1.5-2.5."""
    home = tmp_path_factory.mktemp("champion")
    stores = Stores(home, "sqlite")
    rows, labels = _world(shift=False, concept=False)
    rows = _between(rows, "event_timestamp", *TRAIN)
    labels = labels.filter(pc.is_in(labels.column("event_id"), rows.column("event_id")))
    OfflineWriter(stores.offline_dir).write(rows, tag="train")
    OfflineWriter(stores.outcomes_dir).write(labels, tag="train")
    request = Request("first", None, "the first model", {})
    outcome = Retrainer(stores, RetrainSettings(history_s=DAY / 1000)).handle(request)
    assert outcome.kind == "promoted", outcome.reason
    return stores.models_dir


def _read_requests(settings: Settings) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, consumer_timeout_ms=1500)
    try:
        consumer.assign([TopicPartition(settings.retrain_topic, 0)])
        consumer.seek_to_beginning()
        return [msgspec.json.decode(m.value) for m in consumer]
    finally:
        consumer.close()


def _scenario(settings: Settings, models: Path, *, shift: bool, concept: bool) -> list[dict]:
    """Stream day 2.5-4 through the monitor; the retraining requests it published, each
    with the number of events after the change when it fired."""
    shutil.copytree(models, settings.stores.models_dir)
    registry = ModelRegistry(settings.stores.models_dir)
    version = registry.champion_version()
    assert version is not None
    _, blob = registry.load_verified(version, SCORING_FEATURES)
    model = load_model(version, blob, SCORING_FEATURES)
    rows, labels = _world(shift, concept)
    rows = _between(rows, "event_timestamp", CHANGE, T0 + N * GAP_MS * 2).to_pandas()
    rows = rows.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    label_of = dict(zip(labels.column("event_id").to_pylist(),
                        labels.column("label").to_pylist(), strict=True))  # fmt: skip
    # no merchant views in this world: every merchant reads as new, in training and here
    merchants = np.tile(MERCHANT_DEFAULTS, (len(rows), 1))
    features = scoring_rows(rows[list(FEATURE_NAMES)].to_numpy(np.float64), merchants)
    scores = model.score(features)
    epoch = pd.Timestamp(0, tz="UTC")
    times = ((rows["event_timestamp"] - epoch) // pd.Timedelta(milliseconds=1)).to_numpy()
    assert times[0] >= CHANGE and times[-1] < T0 + 2 * N * GAP_MS
    ensure_topics(settings.kafka, settings.topics)
    config = settings.model_copy(update={"monitor_interval_s": 0.05}).monitor
    fired_at: list[int] = []

    async def run() -> None:
        monitor = Monitor(config)
        task = asyncio.create_task(monitor.run())
        await monitor.started.wait()
        for lo in range(0, len(rows), CHUNK):
            hi = min(lo + CHUNK, len(rows))
            preds, outs = [], []
            for i in range(lo, hi):
                event_id, user = rows.at[i, "event_id"], int(rows.at[i, "user_id"])
                preds.append((str(user).encode(), enc.encode({
                    "prediction_id": f"p-{event_id}", "event_id": event_id, "user_id": user,
                    "score": float(scores[i]), "model_version": version,
                    "event_time": int(times[i]),
                    "features": dict(zip(SCORING_FEATURES, features[i].tolist(), strict=True)),
                })))  # fmt: skip
                outs.append((str(user).encode(), enc.encode({
                    "event_id": event_id, "user_id": user, "label": label_of[event_id],
                    "outcome_time": int(times[i]) + 60_000,
                })))  # fmt: skip
            publish(settings.kafka, settings.predictions_topic, preds)
            publish(settings.kafka, settings.outcomes_topic, outs)
            read = sum(monitor.consumed.values()) + 2 * (hi - lo)
            for _ in range(600):  # every record read, then two snapshots of them
                await asyncio.sleep(0.02)
                if sum(monitor.consumed.values()) >= read:
                    break
            taken = monitor.snapshots
            while monitor.snapshots < taken + 2:
                await asyncio.sleep(0.02)
            requests = monitor.requests
            fired_at.extend([hi] * (requests - len(fired_at)))
        monitor.stop()
        await task
        assert not monitor.dead_letters  # every record judged: the scenario is real
        assert monitor.consumed[settings.predictions_topic] == len(rows)

    asyncio.run(run())
    requests = _read_requests(settings)
    assert len(requests) == len(fired_at)
    return [{**r, "after_events": n} for r, n in zip(requests, fired_at, strict=True)]


@pytest.mark.timeout(300)
def test_a_stable_skewed_stream_never_fires(settings: Settings, champion: Path) -> None:
    requests = _scenario(settings, champion, shift=False, concept=False)
    assert [(r["reason"], r["after_events"]) for r in requests] == []


@pytest.mark.timeout(300)
def test_a_covariate_shift_fires_the_drift_rule_soon(settings: Settings, champion: Path) -> None:
    requests = _scenario(settings, champion, shift=True, concept=False)
    assert requests, "the shift went unnoticed"
    first = requests[0]
    assert "psi(" in first["reason"] and "auc" not in first["reason"], first["reason"]
    assert first["after_events"] <= 4000  # the drift window (5,000) not even full of it


@pytest.mark.timeout(300)
def test_a_concept_drift_fires_the_quality_rule(settings: Settings, champion: Path) -> None:
    requests = _scenario(settings, champion, shift=False, concept=True)
    assert requests, "the drift went unnoticed"
    first = requests[0]
    assert "auc = " in first["reason"] and "psi(" not in first["reason"], first["reason"]
    assert first["after_events"] <= 8000
