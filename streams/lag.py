"""How far the worker group is behind the events topic (from committed offsets)."""

from __future__ import annotations

from kafka import KafkaConsumer, TopicPartition

from featflow.settings import Settings


def group_lag(settings: Settings) -> int:
    """Records in ``events`` not yet covered by a worker checkpoint (committed offsets)."""
    # A consumer that never subscribes only reads the group's offsets; it does not join it.
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    try:
        parts = consumer.partitions_for_topic(settings.events_topic) or set()
        tps = [TopicPartition(settings.events_topic, p) for p in parts]
        ends = consumer.end_offsets(tps)
        return sum(max(ends[tp] - (consumer.committed(tp) or 0), 0) for tp in tps)
    finally:
        consumer.close()
