"""Publishing events with kafka-python: what any producer of featflow does."""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka import KafkaProducer

from infra.config import KafkaConfig
from infra.topics import client_timeouts


def make_producer(kafka: KafkaConfig, *, linger_ms: int = 5) -> KafkaProducer:
    """A kafka-python producer as featflow's own tools send with; ``linger_ms``: how long a
    batch waits to fill (longer: fewer, larger batches)."""
    # acks=all and no idempotence: the embedded broker (Tansu) does not support
    # idempotent producers; retries may duplicate, which offsets make visible.
    # Bootstrap gives up after connect_timeout_s; max_block_ms stays at its default,
    # as it also bounds waiting for buffer space, where a slow broker is not a missing one.
    return KafkaProducer(
        **kafka.python_args(),
        acks="all",
        linger_ms=linger_ms,
        batch_size=256 * 1024,
        enable_idempotence=False,
        **client_timeouts(kafka.connect_timeout_s),
    )


def publish(
    kafka: KafkaConfig,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    *,
    rate: float = 0.0,
) -> int:
    """Send (key, value) records; ``rate`` > 0 paces them in events/s. Returns the count."""
    producer = make_producer(kafka)
    sent = 0
    start = time.monotonic()
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
            sent += 1
            if rate > 0 and sent % 100 == 0:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
    finally:
        producer.close()
    return sent
