"""featflow's partition of a user equals the Kafka clients' (kafka-python's murmur2 and its
default partitioner are the oracle), and a broker holds each record where it says."""

from __future__ import annotations

import numpy as np
from kafka import KafkaConsumer
from kafka.partitioner.default import murmur2

from featflow.settings import Settings
from infra.partitioner import partition_clocks, partition_of
from infra.producer import publish
from infra.topics import ensure_topics


def test_partition_of_equals_kafka_pythons_partitioner() -> None:
    rng = np.random.default_rng(3)
    users = np.r_[
        np.arange(-20, 2_000), rng.integers(0, 2**62, 3_000), [2**63 - 1, -(2**63) + 1]
    ].astype(np.int64)
    for partitions in (1, 3, 8, 13, 64):
        expected = [(murmur2(str(u).encode()) & 0x7FFFFFFF) % partitions for u in users.tolist()]
        assert partition_of(users, partitions).tolist() == expected


def test_partition_clocks_are_running_maxima_per_partition() -> None:
    partition = np.array([0, 1, 0, 1, 0, 2])
    times = np.array([5, 9, 3, 10, 7, 1])
    assert partition_clocks(partition, times).tolist() == [5, 9, 5, 10, 7, 1]


def test_the_broker_holds_each_users_records_where_partition_of_says(settings: Settings) -> None:
    ensure_topics(settings.kafka, settings.topics)
    users = [*range(1, 300), 10**12 + 7]
    publish(settings.kafka, settings.topics.events, [(str(u).encode(), b"{}") for u in users])
    consumer = KafkaConsumer(
        settings.topics.events, bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=3000,
    )  # fmt: skip
    try:
        held = {int(m.key): m.partition for m in consumer}
    finally:
        consumer.close()
    assert len(held) == len(users)
    expected = partition_of(np.array(users), settings.topic_partitions)
    assert [held[u] for u in users] == expected.tolist()
