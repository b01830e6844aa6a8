"""Checkpoints in a Kafka topic: state that moves with its partition to any machine.

A file checkpoint follows its partition only to workers that share the disk
(``$FEATFLOW_HOME``). This store keeps them on the cluster the workers already reach:
topic ``<source>.checkpoints`` (compacted, as Kafka Streams' changelogs are) has the
source's partition count, and partition ``p``'s checkpoints go to its partition ``p``.

A checkpoint is its state in chunks (records of at most ``CHUNK`` bytes: brokers refuse
records over ~1 MB) and then a marker (key ``mark``: offset, DLQ position, chunk count,
where they lie, sha256). Only a checkpoint whose marker was written counts, so a writer
killed between chunks leaves a tail that the next load passes over. A chain is a whole
checkpoint and the checkpoints of changes after it (``streams.checkpoint``); each marker
of changes points at the chain's previous marker, and a load reads the newest chain.

Chains alternate between two key sets (``0/i`` and ``0/n/i``, then ``1/...``), so
compaction, which keeps the newest record of each key, can take a chain's chunks only
when a newer chain is complete: the chunks being written never share a key with those of
the newest complete chain. Tansu (memory storage) does not compact; a Kafka does.
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
        # the marker of each partition's newest complete checkpoint (and "at": its offset)
        self._chain: dict[tuple[str, int], dict] = {}
        self._lock = threading.Lock()
        self._producer = None
        self._created: set[str] = set()

    # -- writing ---------------------------------------------------------------
    def save(
        self, topic: str, partition: int, checkpoint: Checkpoint, *, changes: bool = False
    ) -> None:
        """Write the chunks, then the marker; returns once the broker acknowledged both. A
        whole checkpoint starts a chain (the other key set); changes join the newest."""
        self._ensure(topic)
        key = (topic, partition)
        if key not in self._chain:  # never loaded here: read which chain is the newest
            found = self._last(topic, partition)
            if found is not None:
                found[1].close()
        chain = self._chain.get(key)
        if changes and chain is None:
            raise ValueError(f"changes of {topic}-{partition} need a whole checkpoint first")
        if changes:
            assert chain is not None
            parity, base, seq, prev = chain["parity"], chain["chain"], chain["seq"] + 1, chain["at"]
        else:
            parity = 1 - (chain["parity"] if chain else 1)
            base, seq, prev = None, 0, -1
        body = checkpoint.state
        cid = uuid.uuid4().hex
        producer = self._producer_()
        target = self.changelog(topic)
        prefix = f"{parity}/" if seq == 0 else f"{parity}/{seq}/"
        sends = [
            producer.send(
                target, key=f"{prefix}{i}".encode(), value=body[lo : lo + CHUNK],
                partition=partition, headers=[(_ID, cid.encode())],
            )
            for i, lo in enumerate(range(0, len(body), CHUNK))
        ]  # fmt: skip
        offsets = [s.get(timeout=_TIMEOUT_S).offset for s in sends]
        mark = {
            "offset": checkpoint.offset,
            "dlq_from": checkpoint.dlq_from,
            "id": cid,
            "chain": base or cid,  # the id of the chain's whole checkpoint
            "seq": seq,  # 0: the whole checkpoint; n: the n-th changes after it
            "prev": prev,  # the marker of the chain's previous checkpoint (its offset)
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
        self._chain[key] = mark | {"at": sent.get(timeout=_TIMEOUT_S).offset}

    # -- reading ---------------------------------------------------------------
    def load(self, topic: str, partition: int) -> Checkpoint | None:
        """The partition's newest complete chain, or None; ValueError if its chunks are not
        all there (a topic retention shorter than the checkpoints' life)."""
        self._ensure(topic)
        found = self._last(topic, partition)
        if found is None:
            return None
        newest, consumer, tp = found
        try:
            marks = [newest]
            while marks[0]["seq"] > 0:  # back along the chain to its whole checkpoint
                consumer.seek(tp, marks[0]["prev"])
                record = next(_read(consumer, tp, marks[0]["prev"] + 1))
                marks.insert(0, json.loads(record.value))
            bodies: dict[str, dict[int, bytes]] = {m["id"]: {} for m in marks if m["chunks"]}
            spans = [m for m in marks if m["chunks"]]
            if spans:
                consumer.seek(tp, min(m["first"] for m in spans))
                for record in _read(consumer, tp, max(m["last"] for m in spans) + 1):
                    part = bodies.get(dict(record.headers or []).get(_ID, b"").decode())
                    if part is not None:
                        part[int(record.key.rsplit(b"/", 1)[1])] = record.value
            states = []
            for mark in marks:
                got = bodies.get(mark["id"], {})
                body = b"".join(got.get(i, b"") for i in range(mark["chunks"]))
                if len(body) != mark["size"] or hashlib.sha256(body).hexdigest() != mark["sha256"]:
                    raise ValueError(
                        f"checkpoint of {topic}-{partition} in {self.changelog(topic)} is "
                        f"incomplete ({len(body)} of {mark['size']} bytes): its chunks were removed"
                    )
                states.append(body)
        finally:
            consumer.close()
        return Checkpoint(
            int(newest["offset"]), states[0], int(newest["dlq_from"]), tuple(states[1:])
        )

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
                self._chain[(topic, partition)] = mark | {"at": marks[-1].offset}
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
