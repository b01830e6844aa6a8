"""Log end offsets and group lag agree with what a consumer actually reads, on the real broker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from featflow.settings import Settings
from infra.lag import group_lag, log_end_offsets
from infra.topics import ensure_topics

# Record batches per partition, each flushed on its own so the broker stores it as
# one batch: sizes vary, and the last batch of most partitions holds many records
# (Tansu's ListOffsets(latest) reports the base offset of the last batch + 1).
BATCHES: dict[int, list[int]] = {0: [1, 37, 5, 120], 1: [64, 2, 9], 2: [300], 3: []}
COMMITTED: dict[int, int] = {0: 20, 1: 65, 2: 150}  # mid-batch; partition 3 has none


def _produce(settings: Settings) -> None:
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=10_000
    )
    try:
        for round_ in range(max(len(sizes) for sizes in BATCHES.values())):
            for partition, sizes in BATCHES.items():
                if round_ < len(sizes):
                    for i in range(sizes[round_]):
                        producer.send(settings.events_topic, value=b"r%d" % i, partition=partition)
            producer.flush()  # one batch per partition and round
    finally:
        producer.close()


def _read_all(settings: Settings, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Records a consumer reads from the start of each partition (the offset after the last)."""
    expected = {tp: sum(BATCHES[tp.partition]) for tp in tps}
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    read = dict.fromkeys(tps, 0)
    try:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 30
        quiet_until = None
        while quiet_until is None or time.monotonic() < quiet_until:
            assert time.monotonic() < deadline, f"read {read}, produced {expected}"
            for tp, records in consumer.poll(timeout_ms=200).items():
                assert records[0].offset == read[tp], "no gaps: offsets count records"
                read[tp] = records[-1].offset + 1
            if quiet_until is None and read == expected:
                quiet_until = time.monotonic() + 1.0  # and nothing beyond what was produced
    finally:
        consumer.close()
    return read


def test_log_end_and_lag_match_what_is_read(settings: Settings) -> None:
    ensure_topics(settings.kafka, settings.topics)
    _produce(settings)
    tps = [TopicPartition(settings.events_topic, p) for p in BATCHES]
    read = _read_all(settings, tps)
    assert read == {tp: sum(BATCHES[tp.partition]) for tp in tps}

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert log_end_offsets(consumer, tps) == read
    finally:
        consumer.close()

    assert group_lag(settings.kafka, settings.consumer_group, settings.topics.events) == sum(
        read.values()
    ), "no commit yet: everything is lag"
    committer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    try:
        committer.commit(
            {
                TopicPartition(settings.events_topic, p): OffsetAndMetadata(offset, "", -1)
                for p, offset in COMMITTED.items()
            }
        )
    finally:
        committer.close()
    behind = sum(read[tp] - COMMITTED.get(tp.partition, 0) for tp in tps)
    assert group_lag(settings.kafka, settings.consumer_group, settings.topics.events) == behind


def test_log_end_of_an_empty_topic_is_zero(settings: Settings) -> None:
    ensure_topics(settings.kafka, settings.topics)
    tps = [TopicPartition(settings.events_topic, p) for p in range(settings.topic_partitions)]
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert log_end_offsets(consumer, tps) == dict.fromkeys(tps, 0)
    finally:
        consumer.close()
    assert group_lag(settings.kafka, settings.consumer_group, settings.topics.events) == 0


def test_log_end_returns_while_records_keep_arriving(settings: Settings) -> None:
    """Under live load the probe answers with an end between the acked counts around it."""
    ensure_topics(settings.kafka, settings.topics)
    tp = TopicPartition(settings.events_topic, 0)
    acked = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal acked
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        try:
            while not stop.is_set():
                producer.send(settings.events_topic, value=b"live", partition=0).get(10)
                acked += 1
                time.sleep(0.02)
        finally:
            producer.close()

    with ThreadPoolExecutor(2) as pool:
        producing = pool.submit(produce)
        try:
            while acked < 50:
                assert not producing.done(), producing.exception()
                time.sleep(0.05)
            consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
            try:
                before = acked
                end = pool.submit(log_end_offsets, consumer, [tp]).result(timeout=15)[tp]
                after = acked + 1  # a send may be stored but not yet acknowledged
            finally:
                stop.set()
                consumer.close()
        finally:
            stop.set()
        producing.result()
    assert before <= end <= after
