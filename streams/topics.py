"""The topic catalogue and its creation on any Kafka-protocol broker."""

from __future__ import annotations

import contextlib
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from featflow.settings import Settings


def catalogue(settings: Settings) -> dict[str, int]:
    """Topic name -> partition count. Events are keyed by user_id."""
    return {
        settings.events_topic: settings.topic_partitions,
        settings.dlq_topic: 1,
        settings.outcomes_topic: settings.topic_partitions,
        f"{settings.outcomes_topic}.dlq": 1,
        settings.predictions_topic: settings.topic_partitions,
    }


def ensure_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Create missing topics; existing ones are left as they are."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=settings.kafka_bootstrap, client_id="featflow-admin"
            )
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, num_partitions=parts, replication_factor=1)
            for name, parts in catalogue(settings).items()
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics(wanted)
    finally:
        admin.close()
