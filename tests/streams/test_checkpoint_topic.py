"""Checkpoints in Kafka topics (``streams.checkpoint_topic``), on the real broker: whole,
the newest complete one wins, a writer killed mid-checkpoint costs nothing, and the chunks
being written never share a key with the newest complete checkpoint's (compaction)."""

from __future__ import annotations

import json
import os

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from featflow.settings import Settings
from streams.checkpoint import Checkpoint
from streams.checkpoint_stores import open_checkpoints
from streams.checkpoint_topic import CHUNK, TopicCheckpointStore


def _store(settings: Settings) -> TopicCheckpointStore:
    store = open_checkpoints(
        settings.model_copy(update={"checkpoint_store": "kafka"}).stores,
        settings.kafka,
        settings.topics,
    )
    assert isinstance(store, TopicCheckpointStore)
    return store


def _records(settings: Settings, topic: str, partition: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, consumer_timeout_ms=2000)
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    try:
        return list(consumer)
    finally:
        consumer.close()


def test_round_trip_across_stores_sizes_and_partitions(settings: Settings) -> None:
    store = _store(settings)
    topic = settings.topics.events
    assert store.load(topic, 0) is None
    big = os.urandom(3 * CHUNK + 12345)  # four chunks
    store.save(topic, 0, Checkpoint(10, b"small", dlq_from=3))
    store.save(topic, 0, Checkpoint(20, big, dlq_from=4))
    store.save(topic, 1, Checkpoint(-1, b""))
    store.save(topic, 3, Checkpoint(7, b"three"))
    # another process (another machine: it shares nothing but the cluster) reads them
    other = _store(settings)
    assert other.load(topic, 0) == Checkpoint(20, big, 4)
    assert other.load(topic, 1) == Checkpoint(-1, b"")
    assert other.load(topic, 2) is None
    assert other.load(topic, 3) == Checkpoint(7, b"three")
    other.save(topic, 0, Checkpoint(30, big[::-1]))
    assert store.load(topic, 0) == Checkpoint(30, big[::-1])
    # the changelog has the source's partitions
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert (
            len(consumer.partitions_for_topic(f"{topic}.checkpoints")) == settings.topic_partitions
        )
    finally:
        consumer.close()
    store.close()
    other.close()


def test_a_checkpoint_named_for_no_topic_is_namespaced(settings: Settings) -> None:
    store = _store(settings)
    store.save("monitor", 0, Checkpoint(5, b"join state"))
    assert store.load("monitor", 0) == Checkpoint(5, b"join state")
    assert store.changelog("monitor") == f"{settings.topics.events}.monitor.checkpoints"
    store.close()


def test_a_writer_killed_mid_checkpoint_leaves_the_previous_one(settings: Settings) -> None:
    """Chunks with no marker after them (a writer killed before its marker) are passed over,
    whichever key set they used; the next checkpoint is whole."""
    store = _store(settings)
    topic = settings.topics.events
    first = os.urandom(2 * CHUNK + 5)
    store.save(topic, 2, Checkpoint(100, first))
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, max_request_size=2 * CHUNK)
    for parity in (0, 1):  # both key sets: a broken writer may have used either
        for i in range(2):
            producer.send(store.changelog(topic), key=f"{parity}/{i}".encode(),
                          value=os.urandom(CHUNK), partition=2,
                          headers=[("featflow.checkpoint", b"dead")])  # fmt: skip
    producer.flush()
    producer.close()
    fresh = _store(settings)
    assert fresh.load(topic, 2) == Checkpoint(100, first)
    second = os.urandom(CHUNK + 1)
    fresh.save(topic, 2, Checkpoint(200, second))
    assert _store(settings).load(topic, 2) == Checkpoint(200, second)
    store.close()
    fresh.close()


def test_consecutive_checkpoints_use_the_other_key_set(settings: Settings) -> None:
    """Compaction keeps the newest record of each key: the chunks of a checkpoint being
    written must never share a key with the newest complete one's, or a writer killed
    mid-checkpoint would let compaction take the chunks a restore needs."""
    topic = settings.topics.events
    for size in (2 * CHUNK + 1, CHUNK + 1, 3 * CHUNK):
        store = _store(settings)  # a new process each time: it must read which set is in use
        store.save(topic, 0, Checkpoint(size, os.urandom(size)))
        store.close()
    records = _records(settings, f"{topic}.checkpoints", 0)
    marks = [json.loads(r.value) for r in records if r.key == b"mark"]
    assert [m["parity"] for m in marks] == [0, 1, 0]
    for mark in marks:
        keys = {
            r.key
            for r in records
            if dict(r.headers).get("featflow.checkpoint") == mark["id"].encode()
        }
        assert keys == {f"{mark['parity']}/{i}".encode() for i in range(mark["chunks"])}


def test_a_checkpoint_whose_chunks_are_gone_is_an_error(settings: Settings) -> None:
    store = _store(settings)
    topic = settings.topics.events
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    mark = {"offset": 9, "dlq_from": 0, "id": "gone", "chain": "gone", "seq": 0, "prev": -1,
            "parity": 0, "chunks": 2, "first": 0, "last": 0, "size": 10,
            "sha256": "0" * 64}  # fmt: skip
    store.save(topic, 1, Checkpoint(1, b"x"))  # creates the topic; offset 0 is its chunk
    producer.send(store.changelog(topic), key=b"mark", value=json.dumps(mark).encode(), partition=1)
    producer.flush()
    producer.close()
    with pytest.raises(ValueError, match="incomplete"):
        store.load(topic, 1)
    store.close()
