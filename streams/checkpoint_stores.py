"""The checkpoint store a service's settings name (``FEATFLOW_CHECKPOINT_STORE``)."""

from __future__ import annotations

from infra.config import KafkaConfig, Stores, Topics
from streams.checkpoint import Checkpoints, CheckpointStore
from streams.checkpoint_topic import TopicCheckpointStore


def open_checkpoints(stores: Stores, kafka: KafkaConfig, topics: Topics) -> Checkpoints:
    """Files under ``$FEATFLOW_HOME/checkpoints``, or topics ``<topic>.checkpoints``.

    A checkpoint named for no topic (the monitor's, the trainer's) goes to
    ``<events topic>.<name>.checkpoints``, so deployments sharing a cluster do not mix.
    """
    if stores.checkpoints == "files":
        return CheckpointStore(stores.checkpoint_dir)
    return TopicCheckpointStore(kafka, topics.catalogue(), namespace=topics.events)
