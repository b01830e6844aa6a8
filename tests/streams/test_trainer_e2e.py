"""The trainer on the real broker: requests from topic ``retrain`` (bad ones dead-lettered),
a shadow trial decided from the monitor's rows on topic ``monitoring``, every decision on
topic ``model.events`` exactly once, and a trainer killed mid-trial that resumes and never
acts on a request twice."""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest
from kafka import KafkaConsumer, TopicPartition

from featflow.settings import Settings
from inference.model_events import ModelEvents, verify
from inference.registry import ModelRegistry
from infra.producer import publish
from infra.topics import ensure_topics
from monitoring.snapshot import MetricRow
from streams.trainer import Trainer
from tests.inference.world import T0, N, World

enc = msgspec.json.Encoder()


def _read(settings: Settings, topic: str) -> list:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1500,
    )
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        return list(consumer)
    finally:
        consumer.close()


def _request(rid: str, version: str | None) -> tuple[bytes, bytes]:
    reason = "auc = 0.61 breached auc < holdout - 0.05"
    body = {"request_id": rid, "time_ms": T0, "model_version": version, "reason": reason,
            "values": {"auc": 0.61}}  # fmt: skip
    return b"", enc.encode(body)


async def _until(check, seconds: float = 90.0) -> None:
    for _ in range(int(seconds / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


def _kinds(settings: Settings) -> list[str]:
    return [r["kind"] for r in ModelEvents(settings.stores.models_dir).rows()]


@pytest.mark.timeout(300)
def test_requests_to_promotion_through_a_shadow_trial_and_a_kill(settings: Settings) -> None:
    settings = settings.model_copy(
        update={
            "trainer_shadow": True,
            "trainer_shadow_min_labels": 1000,
            "promotion_min_auc_gain": -1.0,
            "trainer_alpha": 0.5,
        }
    )  # the offline gate passes any challenger: the live verdict decides
    World(settings.stores, change=False).write(T0, T0 + 10 * N * 1000)
    ensure_topics(settings.kafka, settings.topics)
    cfg = settings.trainer
    registry = ModelRegistry(settings.stores.models_dir)

    async def scenario() -> None:
        trainer = Trainer(cfg)
        task = asyncio.create_task(trainer.run())
        await trainer.started.wait()
        bad = (b"", b'{"request_id": 7}')
        requests = [bad, (b"k", None), _request("r0", None), _request("r1", "v0001")]
        publish(settings.kafka, settings.retrain_topic, requests)
        await _until(lambda: "shadow_started" in _kinds(settings))
        assert registry.champion_version() == "v0001"
        assert registry.shadow_version() == "v0002"
        task.cancel()  # killed mid-trial: no clean stop
        with pytest.raises(asyncio.CancelledError):
            await task

        restarted = Trainer(cfg)
        task = asyncio.create_task(restarted.run())
        await restarted.started.wait()
        await asyncio.sleep(1.0)
        assert _kinds(settings)[-1] == "shadow_started"  # resumed, still waiting
        rows = [  # the monitor's comparison: the shadow ahead on 2,000 paired events
            MetricRow(T0, "v0002", "shadow_auc", "v0001", 0.74, 2000),
            MetricRow(T0, "v0002", "shadow_champion_auc", "v0001", 0.70, 2000),
            MetricRow(T0, "v0002", "shadow_auc_gain", "v0001", 0.04, 2000),
            MetricRow(T0, "v0002", "shadow_auc_gain_se", "v0001", 0.01, 2000),
        ]
        publish(settings.kafka, settings.monitoring_topic,
                [(b"v0002", b"not a row")] + [(b"v0002", enc.encode(r)) for r in rows])  # fmt: skip
        await _until(lambda: _kinds(settings)[-1] == "promoted")
        publish(settings.kafka, settings.retrain_topic, [_request("r1", "v0001")])  # again
        await asyncio.sleep(2.0)
        restarted.stop()
        await task
        assert restarted.ignored_rows == 1

    asyncio.run(scenario())

    kinds = _kinds(settings)
    assert kinds == ["triggered", "trained", "promoted",
                     "triggered", "trained", "shadow_started", "promoted"]  # fmt: skip
    assert registry.champion_version() == "v0002" and registry.shadow_version() is None
    promoted = ModelEvents(settings.stores.models_dir).rows()[-1]
    assert promoted["reason"].startswith("shadow: better: challenger AUC 0.7400 vs champion")
    assert verify(settings.stores.models_dir) == []

    history = ModelEvents(settings.stores.models_dir).rows()
    on_topic = [json.loads(m.value) for m in _read(settings, settings.model_events_topic)]
    assert on_topic == history  # every decision once, in order, across the kill
    dead, tombstone = _read(settings, f"{settings.retrain_topic}.dlq")
    assert dead.value == b'{"request_id": 7}'
    assert dict(dead.headers)["featflow.reason"] == b"schema"
    assert (tombstone.key, tombstone.value) == (b"k", None)  # keeps its key
    assert dict(tombstone.headers)["featflow.reason"] == b"malformed_json"


@pytest.mark.timeout(300)
def test_a_challenger_that_is_not_better_is_rejected_on_the_broker(settings: Settings) -> None:
    """A stable world and a margin no challenger can clear: the request is answered with
    ``rejected`` on topic model.events, the champion keeps serving, no shadow is started."""
    settings = settings.model_copy(
        update={"trainer_shadow": True, "promotion_min_auc_gain": 0.2}
    )  # an AUC gain of 0.2 on the same holdout: not in a stable world
    World(settings.stores, change=False).write(T0, T0 + 10 * N * 1000)
    ensure_topics(settings.kafka, settings.topics)
    registry = ModelRegistry(settings.stores.models_dir)

    async def scenario() -> None:
        trainer = Trainer(settings.trainer)
        task = asyncio.create_task(trainer.run())
        await trainer.started.wait()
        publish(settings.kafka, settings.retrain_topic, [_request("r0", None)])
        await _until(lambda: _kinds(settings)[-1:] == ["promoted"])  # the first champion
        publish(settings.kafka, settings.retrain_topic, [_request("r1", "v0001")])
        await _until(lambda: _kinds(settings)[-1:] == ["rejected"])
        trainer.stop()
        await task

    asyncio.run(scenario())
    assert _kinds(settings) == ["triggered", "trained", "promoted",
                                "triggered", "trained", "rejected"]  # fmt: skip
    rejected = ModelEvents(settings.stores.models_dir).rows()[-1]
    assert rejected["model_version"] == "v0002" and "margin 0.2" in rejected["reason"]
    assert registry.champion_version() == "v0001" and registry.shadow_version() is None
    on_topic = [json.loads(m.value) for m in _read(settings, settings.model_events_topic)]
    assert [r["kind"] for r in on_topic] == _kinds(settings)


def test_refused_requests_are_dead_lettered_once_across_a_crash(settings: Settings) -> None:
    """A crash after a refused request's letter but before its offset was saved: the
    restarted trainer reads the request again and finds the letter already in the DLQ."""
    from streams.checkpoint import Checkpoint, CheckpointStore
    from streams.trainer import CHECKPOINT_NAME

    ensure_topics(settings.kafka, settings.topics)
    cfg = settings.trainer
    bad = [(b"", b'{"request_id": %d}' % i) for i in range(3)]
    publish(settings.kafka, settings.retrain_topic, bad)

    async def life() -> Trainer:
        trainer = Trainer(cfg)
        task = asyncio.create_task(trainer.run())
        await _until(lambda: trainer.offset == len(bad) - 1)
        trainer.stop()
        await task
        return trainer

    first = asyncio.run(life())
    assert first.dead_letters == len(bad)
    store = CheckpointStore(settings.stores.checkpoint_dir)
    saved = store.load(CHECKPOINT_NAME, 0)
    assert saved is not None and saved.dlq_from > 0
    # the crash: every letter sent, the first request's offset never saved
    store.save(CHECKPOINT_NAME, 0, Checkpoint(-1, b"", 0))
    second = asyncio.run(life())
    assert second.dead_letters == 0
    letters = _read(settings, f"{settings.retrain_topic}.dlq")
    assert sorted(m.value for m in letters) == sorted(v for _, v in bad)


@pytest.mark.timeout(300)
def test_a_registry_damaged_by_hand_holds_a_request_until_repaired(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``champion.json`` edited into nonsense while a request arrives: the trainer stays
    up, records nothing and says why on each try; once the file is repaired the request is
    decided once, as if nothing had happened."""
    import streams.trainer

    monkeypatch.setattr(streams.trainer, "REGISTRY_RETRY_S", 0.2)
    settings = settings.model_copy(update={"promotion_min_auc_gain": 0.2})
    World(settings.stores, change=False).write(T0, T0 + 10 * N * 1000)
    ensure_topics(settings.kafka, settings.topics)
    alias = settings.stores.models_dir / "champion.json"

    async def scenario() -> int:
        trainer = Trainer(settings.trainer)
        task = asyncio.create_task(trainer.run())
        await trainer.started.wait()
        publish(settings.kafka, settings.retrain_topic, [_request("r0", None)])
        await _until(lambda: _kinds(settings)[-1:] == ["promoted"])
        good = alias.read_text()
        alias.write_text('{"version": "v0001", "history": "oops"')
        publish(settings.kafka, settings.retrain_topic, [_request("r1", "v0001")])
        await _until(lambda: trainer.registry_errors >= 3)
        assert not task.done() and _kinds(settings)[-1:] == ["promoted"]
        errors = trainer.registry_errors
        alias.write_text(good)
        await _until(lambda: _kinds(settings)[-1:] == ["rejected"])
        trainer.stop()
        await task
        return errors

    assert asyncio.run(scenario()) >= 3
    assert _kinds(settings) == ["triggered", "trained", "promoted",
                                "triggered", "trained", "rejected"]  # fmt: skip
    assert ModelRegistry(settings.stores.models_dir).champion_version() == "v0001"
    assert verify(settings.stores.models_dir) == []
