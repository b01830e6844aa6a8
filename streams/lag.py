"""How far the worker group is behind the events topic (from committed offsets).

Log end offsets are probed by reading, not only asked for: Tansu (the embedded
broker) answers ListOffsets(latest) with the base offset of a partition's last
record batch, short of the true end by up to a batch. Reading forward from the
reported end finds the real one on any broker (on Apache Kafka it reads nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

from kafka import KafkaConsumer, TopicPartition

from featflow.settings import Settings


def log_end_offsets(
    consumer: KafkaConsumer, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """Offset after the last record of each partition (``consumer`` must not be subscribed)."""
    ends = dict(consumer.end_offsets(list(tps)))
    consumer.assign(list(tps))
    for tp in tps:
        consumer.seek(tp, ends[tp])
    while True:
        fetched = consumer.poll(timeout_ms=300, max_records=100_000)
        if not fetched:
            return ends
        for tp, records in fetched.items():
            ends[tp] = max(ends[tp], records[-1].offset + 1)


def group_lag(settings: Settings, topic: str | None = None) -> int:
    """Records in ``topic`` (default: events) not yet covered by the group's committed offsets."""
    topic = topic or settings.events_topic
    # A consumer that never subscribes only reads the group's offsets; it does not join it.
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        committed = {tp: consumer.committed(tp) or 0 for tp in tps}
        ends = log_end_offsets(consumer, tps)
        return sum(max(ends[tp] - committed[tp], 0) for tp in tps)
    finally:
        consumer.close()
