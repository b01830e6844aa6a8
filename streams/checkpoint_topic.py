"""Checkpoints in a Kafka topic: state that moves with its partition to any machine.

A file checkpoint follows its partition only to workers that share the disk
(``$FEATFLOW_HOME``). This store keeps them on the cluster the workers already reach:
topic ``<source>.checkpoints`` (compacted, as Kafka Streams' changelogs are) has the
source's partition count, and partition ``p``'s checkpoints go to its partition ``p``.

A checkpoint is its state in chunks (records of at most ``CHUNK`` bytes: brokers refuse
records over ~1 MB) and then a marker (key ``mark``: offset, DLQ position, chunk count,
where they lie, sha256). Only a checkpoint whose marker was written counts, so a writer
killed between chunks leaves a tail that the next load passes over.

Chunks alternate between two key sets (``0/i``, ``1/i``) from one checkpoint to the next,
so compaction, which keeps the newest record of each key, can take a checkpoint's chunks
only when a newer one is complete: the chunks being written never share a key with those
of the newest complete checkpoint. Tansu (memory storage) does not compact; a Kafka does.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import uuid

from infra.config import KafkaConfig
from infra.topics import client_timeouts
from streams.checkpoint import Checkpoint

CHUNK = 512 * 1024
_MARK = b"mark"
_ID = "featflow.checkpoint"
_TIMEOUT_S = 30.0


class TopicCheckpointStore:
    """Checkpoints in ``<topic>.checkpoints``, one topic partition per source partition."""

    def __init__(self, kafka: KafkaConfig, partitions: dict[str, int], *, namespace: str):
        """``partitions``: each source topic's partition count (its changelog's); a name not
        among them (one service's single checkpoint) is put under ``namespace``."""
        self.kafka = kafka
        self.partitions = partitions
        self.namespace = namespace
        self.root = f"topics <topic>.checkpoints ({namespace}.checkpoints and the like)"
        self._parity: dict[tuple[str, int], int] = {}  # of the newest complete checkpoint
        self._lock = threading.Lock()
        self._producer = None
        self._created: set[str] = set()

    # -- writing ---------------------------------------------------------------
    def save(self, topic: str, partition: int, checkpoint: Checkpoint) -> None:
        """Write the chunks, then the marker; returns once the broker acknowledged both."""
        self._ensure(topic)
        key = (topic, partition)
        if key not in self._parity:  # never loaded here: read which key set is in use
            self._last(topic, partition)
        parity = 1 - self._parity.get(key, 1)
        body = checkpoint.state
        cid = uuid.uuid4().hex.encode()
        producer = self._producer_()
        target = self.changelog(topic)
        sends = [
            producer.send(
                target, key=f"{parity}/{i}".encode(), value=body[lo : lo + CHUNK],
                partition=partition, headers=[(_ID, cid)],
            )
            for i, lo in enumerate(range(0, len(body), CHUNK))
        ]  # fmt: skip
        offsets = [s.get(timeout=_TIMEOUT_S).offset for s in sends]
        mark = {
            "offset": checkpoint.offset,
            "dlq_from": checkpoint.dlq_from,
            "id": cid.decode(),
            "parity": parity,
            "chunks": len(offsets),
            "first": offsets[0] if offsets else -1,
            "last": offsets[-1] if offsets else -1,
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        sent = producer.send(
            target, key=_MARK, value=json.dumps(mark).encode(), partition=partition
        )
        sent.get(timeout=_TIMEOUT_S)
        self._parity[key] = parity

    # -- reading ---------------------------------------------------------------
    def load(self, topic: str, partition: int) -> Checkpoint | None:
        """The partition's newest complete checkpoint, or None; ValueError if its chunks are
        not all there (a topic retention shorter than the checkpoints' life)."""
        self._ensure(topic)
        found = self._last(topic, partition)
        if found is None:
            return None
        mark, consumer, tp = found
        try:
            body = b""
            if mark["chunks"]:
                parts: dict[int, bytes] = {}
                consumer.seek(tp, mark["first"])
                for record in _read(consumer, tp, mark["last"] + 1):
                    if dict(record.headers or []).get(_ID) == mark["id"].encode():
                        parts[int(record.key.split(b"/")[1])] = record.value
                body = b"".join(parts.get(i, b"") for i in range(mark["chunks"]))
            if len(body) != mark["size"] or hashlib.sha256(body).hexdigest() != mark["sha256"]:
                raise ValueError(
                    f"checkpoint of {topic}-{partition} in {self.changelog(topic)} is incomplete "
                    f"({len(body)} of {mark['size']} bytes): its chunks were removed"
                )
        finally:
            consumer.close()
        return Checkpoint(int(mark["offset"]), body, int(mark["dlq_from"]))

    def _last(self, topic: str, partition: int):  # -> (mark, open consumer, tp) | None
        """The newest marker of the partition (read backwards from the end, in growing
        steps: a complete checkpoint ends with its marker, so this reads one record unless
        a writer died mid-checkpoint)."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            **self.kafka.python_args(),
            enable_auto_commit=False,
            fetch_max_bytes=8 * CHUNK,
            max_partition_fetch_bytes=2 * CHUNK,
            **client_timeouts(self.kafka.connect_timeout_s),
        )
        tp = TopicPartition(self.changelog(topic), partition)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        low = consumer.beginning_offsets([tp])[tp]
        step, stop = 1, end
        while stop > low:
            start = max(low, stop - step)
            consumer.seek(tp, start)
            marks = [r for r in _read(consumer, tp, stop) if r.key == _MARK]
            if marks:
                mark = json.loads(marks[-1].value)
                self._parity[(topic, partition)] = int(mark["parity"])
                return mark, consumer, tp
            stop, step = start, step * 4
        consumer.close()
        return None

    # -- plumbing --------------------------------------------------------------
    def _producer_(self):
        from kafka import KafkaProducer

        with self._lock:
            if self._producer is None:
                self._producer = KafkaProducer(
                    **self.kafka.python_args(),
                    acks="all",
                    enable_idempotence=False,
                    max_request_size=2 * CHUNK,
                    **client_timeouts(self.kafka.connect_timeout_s),
                )
            return self._producer

    def _ensure(self, topic: str) -> None:
        """Create the changelog of ``topic`` (compacted) if it does not exist."""
        if topic in self._created:
            return
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(
            **self.kafka.python_args(), **client_timeouts(self.kafka.connect_timeout_s)
        )
        try:
            name = self.changelog(topic)
            if name not in set(admin.list_topics()):
                new = NewTopic(
                    name, num_partitions=self.partitions.get(topic, 1), replication_factor=1,
                    topic_configs={"cleanup.policy": "compact"},
                )  # fmt: skip
                with contextlib.suppress(TopicAlreadyExistsError):  # another worker won
                    admin.create_topics([new])
        finally:
            admin.close()
        self._created.add(topic)

    def changelog(self, name: str) -> str:
        """The checkpoint topic of source topic (or checkpoint name) ``name``."""
        if name in self.partitions:
            return f"{name}.checkpoints"
        return f"{self.namespace}.{name}.checkpoints"

    def close(self) -> None:
        """Close the producer (the worker's stop)."""
        with self._lock:
            if self._producer is not None:
                self._producer.close()
                self._producer = None


def _read(consumer, tp, stop: int):
    """Records of ``tp`` from the consumer's position up to offset ``stop`` (exclusive)."""
    position = consumer.position(tp)
    while position < stop:
        batch = consumer.poll(timeout_ms=int(_TIMEOUT_S * 1000), max_records=500)
        records = batch.get(tp, [])
        if not records:
            position = consumer.position(tp)
            if position >= stop:
                break
            raise TimeoutError(f"{tp.topic}-{tp.partition}: no records from {position}")
        for record in records:
            if record.offset >= stop:
                return
            yield record
        position = records[-1].offset + 1
