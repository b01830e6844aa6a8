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
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from infra.config import KafkaConfig
from infra.dead_letter import DeadLetter, source_of
from infra.topics import client_timeouts

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

log = logging.getLogger(__name__)

READ_BACK_TIMEOUT_S = 120.0  # one attempt at reading a DLQ's tail

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
    stop: threading.Event | None = None,
) -> set[tuple[int, int]]:
    """``(partition, offset)`` of the records of ``source_topic`` whose dead letter ``dlq``
    holds at or after position ``start``, for each partition ``p`` in ``after`` only past
    offset ``after[p]`` (what a replay will meet again).

    A replay must not start without this answer, so a broker that does not answer is
    retried (1 s doubling to 10 s, a warning each time) until it does, or until ``stop`` is
    set (then ``TimeoutError``): a broker silent during a rebalance once stopped the worker.
    """
    from kafka.errors import KafkaError

    if not after:
        return set()
    stop = stop or threading.Event()  # never set: wait for the broker
    pause = 1.0
    while True:
        try:
            seen = _read_back(kafka, dlq, start, source_topic, after)
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("%s not readable (%s): retrying in %.0f s", dlq, exc, pause)
            if stop.wait(pause):
                raise TimeoutError(f"stopped before {dlq} could be read back") from exc
            pause = min(pause * 2, 10.0)
            continue
        if seen:  # only after an unclean stop: a clean one checkpoints what it processed
            msg = "%d dead letters of the replay already in %s: not sent again"
            log.warning(msg, len(seen), dlq)
        return seen


def _read_back(
    kafka: KafkaConfig, dlq: str, start: int, source_topic: str, after: Mapping[int, int]
) -> set[tuple[int, int]]:
    from kafka import KafkaConsumer, TopicPartition

    from infra.lag import log_end_offsets

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
        deadline = time.monotonic() + READ_BACK_TIMEOUT_S
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not read back to offset {end} in {READ_BACK_TIMEOUT_S} s")
            for message in consumer.poll(timeout_ms=500).get(tp, []):
                source = source_of(message.headers)
                if source is None or source[0] != source_topic:
                    continue
                _, partition, offset = source
                if partition in after and offset > after[partition]:
                    seen.add((partition, offset))
        return seen
    finally:
        consumer.close()
