"""What a DLQ already holds: so a replay after a crash does not dead-letter a record twice.

Operators count a DLQ and replay it, so each refused record must be in it once. A service
that replays records after a restart (from a checkpoint or a committed offset) meets its
bad records again. Before sending their dead letters it asks :func:`already_sent` which
source offsets the DLQ already holds.

How far back to read: each checkpoint records :func:`dlq_end`, taken after every dead
letter of the records it covers was acknowledged. A record replayed after that checkpoint
was refused (if it was) after that moment, so its letter lies at or after that position.
The position may be low (the embedded broker reports ends a batch short, see
``infra.lag``): reading a little more is safe, missing a letter is not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from infra.config import KafkaConfig
from infra.dead_letter import DeadLetter, source_of
from infra.topics import client_timeouts

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

log = logging.getLogger(__name__)

# Every DLQ has one partition (``Topics.catalogue``): one order to read back.
DLQ_PARTITION = 0


async def dlq_end(consumer: AIOKafkaConsumer, dlq: str) -> int:
    """The DLQ's end as the broker lists it (``Checkpoint.dlq_from``): nothing sent after now
    lies before it. 0 (a restore reads all of it back) if the broker does not answer."""
    from aiokafka import TopicPartition
    from aiokafka.errors import KafkaError

    tp = TopicPartition(dlq, DLQ_PARTITION)
    try:
        return int((await consumer.end_offsets([tp]))[tp])
    except KafkaError as exc:
        log.warning("end of %s unknown (%s): a restore will read all of it", dlq, exc)
        return 0


class LettersSent:
    """The records a replay will meet again whose letter the DLQ already holds."""

    def __init__(self) -> None:
        self._sent: set[tuple[str, int, int]] = set()

    def __len__(self) -> int:
        return len(self._sent)

    def add(self, topic: str, sent: set[tuple[int, int]]) -> None:
        """Remember ``sent`` (from :func:`already_sent`) for records of ``topic``."""
        self._sent.update((topic, p, o) for p, o in sent)

    def forget(self, topic: str, partition: int) -> None:
        """Drop ``partition``'s (given up: its next owner reads the DLQ back itself)."""
        self._sent = {s for s in self._sent if s[:2] != (topic, partition)}

    def fresh(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """The ``letters`` to send: those whose record's letter the DLQ does not hold yet."""
        if not self._sent:
            return list(letters)
        out = []
        for d in letters:
            key = (d.topic, d.partition, d.offset)
            if key in self._sent:
                self._sent.discard(key)  # met once: a later copy would be a new refusal
            else:
                out.append(d)
        return out


def already_sent(
    kafka: KafkaConfig,
    dlq: str,
    start: int,
    source_topic: str,
    after: Mapping[int, int],
    timeout_s: float = 120.0,
) -> set[tuple[int, int]]:
    """``(partition, offset)`` of the records of ``source_topic`` whose dead letter ``dlq``
    holds at or after position ``start``, for each partition ``p`` in ``after`` only past
    offset ``after[p]`` (what a replay will meet again)."""
    from kafka import KafkaConsumer, TopicPartition

    from infra.lag import log_end_offsets

    if not after:
        return set()
    consumer = KafkaConsumer(
        **kafka.python_args(),
        enable_auto_commit=False,
        **client_timeouts(kafka.connect_timeout_s),
    )
    try:
        tp = TopicPartition(dlq, DLQ_PARTITION)
        end = log_end_offsets(consumer, [tp])[tp]
        seen: set[tuple[int, int]] = set()
        consumer.seek(tp, max(start, 0))
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dlq} not read back to offset {end} in {timeout_s} s")
            for message in consumer.poll(timeout_ms=500).get(tp, []):
                source = source_of(message.headers)
                if source is None or source[0] != source_topic:
                    continue
                _, partition, offset = source
                if partition in after and offset > after[partition]:
                    seen.add((partition, offset))
        if seen:  # only after an unclean stop: a clean one checkpoints what it processed
            msg = "%d dead letters of the replay already in %s: not sent again"
            log.warning(msg, len(seen), dlq)
        return seen
    finally:
        consumer.close()
