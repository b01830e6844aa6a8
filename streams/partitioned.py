"""A consumer-group member that owns partitions with state: the shape of both stream workers.

The feature worker (``events`` -> user features) and the merchant worker (``merchant_rows``
-> merchant features) differ only in what a partition's processor does and what its
effects write; ownership, restore, the fetch loop and checkpoints are this one class.

Delivery is at-least-once with idempotent effects. Each fetch (all its partitions together)
becomes one set of effects, written while the next fetch is decoded and processed (one
fetch in flight at most). Every ``checkpoint_interval_s``, after waiting for the writes in
flight, the worker saves a partition's state with the offset it reflects, and only then
commits that offset to Kafka. On (re)start or rebalance a partition resumes from its
checkpoint: later records are replayed into the state as it was before them, so nothing is
counted twice. Dead letters too: a replayed record whose letter the DLQ already holds is
not sent again (``infra.dead_letter_log``), so each bad record is in the DLQ once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from infra.config import PARTITION_FETCH_BYTES
from infra.dead_letter import DeadLetter
from infra.dead_letter_log import LettersSent, already_sent, dlq_end
from infra.lag import log_end_offsets
from infra.topics import ensure_topics
from streams.checkpoint import Checkpoint
from streams.checkpoint_stores import open_checkpoints
from streams.checkpointer import Checkpointable, Checkpointer
from streams.config import WorkerConfig
from streams.store_retry import StoreRetry

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Checkpointable)  # a partition's processor
E = TypeVar("E")  # one fetch's effects


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: PartitionedWorker):
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.worker.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # aiokafka logs and swallows listener errors; hand them to the run loop.
        try:
            await self.worker.acquire(assigned)
        except Exception as exc:
            self.worker.fatal = exc


class PartitionedWorker(ABC, Generic[P, E]):
    """Owns partitions of ``topic`` in consumer group ``group``; subclasses say what a
    partition's processor is (:meth:`new_processor`) and what a fetch's effects do."""

    #: Process a fetch in a thread, off the event loop: for a worker that shares its process
    #: (and loop) with one whose latency matters more; the kernels release the GIL.
    process_in_thread = False

    def __init__(
        self, config: WorkerConfig, *, topic: str, dlq: str, group: str, pace_s: float = 0.0
    ):
        self.config = config
        self.topic = topic
        self.dlq = dlq  # where this worker's refused records of ``topic`` go
        self.group = group
        # after a fetch that was not full, wait this long before the next: larger batches
        # for a worker whose freshness matters less than the CPU it leaves to others
        self.pace_s = pace_s
        self.checkpoints = open_checkpoints(config.stores, config.kafka, config.topics)
        self.processors: dict[int, P] = {}
        # Dead letters the DLQ acknowledged, by (source topic, reason): what operators count.
        self.dead_letters: collections.Counter[tuple[str, str]] = collections.Counter()
        self.letters_sent = LettersSent()  # replayed records whose letter the DLQ holds
        # set on stop: what waits in a thread for a store or the broker gives up (a write
        # retrying: the checkpoint stays behind it; a DLQ read-back: no replay starts)
        self._stop_waiting = threading.Event()
        self.store_retry = StoreRetry(self._stop_waiting)
        self.checkpointer = Checkpointer(
            self.checkpoints,
            config.checkpoint_interval_s,
            self._commit,
            mark=self.dlq_end,
            retry=self.store_retry.call,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._inflight: asyncio.Task[None] | None = None  # the last fetch's writes
        # held while a fetch is processed until its writes are in flight: a release waits
        # for it, so it never copies a state a thread is changing (process_in_thread; a
        # rebalance under load crashed the process in malloc) nor checkpoints records whose
        # writes were not yet started
        self._busy = asyncio.Lock()
        # sends whose acknowledgement a checkpoint must wait for, but the next fetch need not
        self._unacked: list[asyncio.Future[object]] = []
        self._stopping = asyncio.Event()
        self.started = asyncio.Event()  # set once the producer and stores are ready
        self.fatal: BaseException | None = None  # raised by run(): the worker must stop

    # -- what subclasses define ----------------------------------------------
    @abstractmethod
    def new_processor(self, partition: int, checkpoint: Checkpoint | None) -> P:
        """A processor for ``partition``: from its checkpoint (a chain), or fresh (None)."""

    @abstractmethod
    def merge(self, parts: list[E]) -> E:
        """One fetch's per-partition effects as one."""

    @abstractmethod
    async def apply(self, effects: E) -> None:
        """Perform one fetch's effects (stores, topics); runs while the next is processed."""

    def states_held(self) -> dict[str, int]:
        """What the owned partitions' states hold: ``state_bytes`` and ``state_entities``
        (the stats' fields of ``/metrics``)."""
        states = [p.state for p in list(self.processors.values())]
        return {
            "state_bytes": sum(s.nbytes for s in states),
            "state_entities": sum(s.n_entities for s in states),
        }

    async def prepare(self) -> None:
        """Open the stores (before the consumer joins its group)."""

    # -- partition ownership -------------------------------------------------
    async def acquire(self, partitions: list[TopicPartition]) -> None:
        """Take over ``partitions``: restore each from its checkpoint (or replay from the
        start), learn which letters of the replay the DLQ already holds, then seek past what
        the state holds and hand each partition to the fetch loop.

        The fetch loop runs on while this awaits (loads, the DLQ read-back): it drops
        records of a partition without a processor, so a partition gets its processor only
        once its replay's letters are known, right after its seek. (Given the processor
        before the read-back, a replay sent letters the DLQ held: a test's three kills made
        87 letters of 80 bad records once the two groups of a process joined together.)
        """
        assert self._consumer is not None
        partitions = [
            tp
            for tp in partitions
            if tp.topic == self.topic and tp.partition not in self.processors
        ]
        # off the loop and together: a checkpoint in a topic is a fetch away (its heartbeat
        # must go on meanwhile)
        loaded = await asyncio.gather(
            *(asyncio.to_thread(self.checkpoints.load, tp.topic, tp.partition) for tp in partitions)
        )
        for tp, checkpoint in zip(partitions, loaded, strict=True):
            if checkpoint is None:
                continue
            end = (await self._consumer.end_offsets([tp]))[tp]
            if checkpoint.offset >= end:  # may be a broker under-reporting: read to be sure
                end = await asyncio.to_thread(self._log_end, tp)
            if checkpoint.offset >= end:
                # Skipping up to the checkpoint would silently drop the new log.
                raise RuntimeError(
                    f"checkpoint of {tp.topic}-{tp.partition} is at offset "
                    f"{checkpoint.offset} but the log ends at {end}: the topic was "
                    f"recreated; remove {self.checkpoints.root} (and the stores) to rebuild"
                )
        processors = [
            self.new_processor(tp.partition, c) for tp, c in zip(partitions, loaded, strict=True)
        ]
        if partitions:
            dlq_from = min(0 if c is None else c.dlq_from for c in loaded)
            after = {p.partition: p.offset for p in processors}
            sent = await asyncio.to_thread(
                already_sent, self.config.kafka, self.dlq, dlq_from, self.topic, after,
                self._stop_waiting,
            )  # fmt: skip
            self.letters_sent.add(self.topic, sent)
        for tp, checkpoint, processor in zip(partitions, loaded, processors, strict=True):
            if checkpoint is None:
                # Without a checkpoint the state is empty, so the history must be
                # replayed from the start whatever offset the group committed.
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, checkpoint.offset + 1)
            self.processors[tp.partition] = processor  # no await since its seek
            self.checkpointer.track(tp.partition, processor.offset, checkpoint)
            log.info("acquired %s-%d at offset %d", tp.topic, tp.partition, processor.offset)

    def _log_end(self, tp: TopicPartition) -> int:
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaTopicPartition

        probe = KafkaConsumer(**self.config.kafka.python_args())
        try:
            ktp = KafkaTopicPartition(tp.topic, tp.partition)
            return log_end_offsets(probe, [ktp])[ktp]
        finally:
            probe.close()

    async def release(self, partitions: list[TopicPartition]) -> None:
        """Give up ``partitions`` (revoked or stopping): wait for the fetch being processed,
        drain the writes, then checkpoint."""
        async with self._busy:
            await self._release(partitions)

    async def _release(self, partitions: list[TopicPartition]) -> None:
        await self.drain()  # a checkpoint must not get ahead of the stores
        await self.checkpointer.settle()  # nor be overtaken by an older one
        dlq_from = await self.dlq_end()
        for tp in partitions:
            if tp.topic != self.topic:
                continue
            processor = self.processors.pop(tp.partition, None)
            self.letters_sent.forget(self.topic, tp.partition)
            if processor is not None:
                self.checkpointer.save_now(processor, dlq_from)
                self.checkpointer.forget(tp.partition)
                log.info("released %s-%d at offset %d", tp.topic, tp.partition, processor.offset)

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        """Create topics, open the stores, connect the producer and join the consumer group."""
        await self.open()
        await self.join()

    async def open(self) -> None:
        """Create topics, open the stores and connect the producer (:meth:`start`'s first
        half: a process opens its workers in order, then joins their groups together, since
        each join waits out the broker's initial rebalance delay, ~3 s)."""
        config = self.config
        await asyncio.to_thread(ensure_topics, config.kafka, config.topics)
        await self.prepare()
        self._producer = AIOKafkaProducer(**config.kafka.aio_args(), acks="all")
        await self._producer.start()

    async def join(self) -> None:
        """Join the consumer group (:meth:`start`'s second half)."""
        config = self.config
        self._consumer = AIOKafkaConsumer(
            **config.kafka.aio_args(),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
            # A SIGKILLed member must leave the group quickly: the broker waits up to
            # the rebalance timeout for members to rejoin (Tansu waits all of it).
            session_timeout_ms=int(config.session_timeout_s * 1000),
            heartbeat_interval_ms=max(int(config.session_timeout_s * 1000) // 6, 100),
            rebalance_timeout_ms=int(config.session_timeout_s * 2000),
            fetch_max_wait_ms=max(config.batch_max_wait_ms, 1),
        )
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self._consumer.start()
        # Start-up objects (faust, Feast, aiokafka: ~200k) live as long as the process; a
        # full collection walks them in ~130 ms, a stall in the hot path. Freeze them.
        gc.collect()
        gc.freeze()
        self.started.set()

    async def stop(self) -> None:
        """Checkpoint every owned partition and close the Kafka clients."""
        self._stopping.set()
        self._stop_waiting.set()
        if self._consumer is not None:
            await self.release([TopicPartition(self.topic, p) for p in self.processors])
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def run(self) -> None:
        """Fetch, process and write until ``stop`` is called."""
        assert self._consumer is not None
        while not self._stopping.is_set():
            if self.fatal is not None:
                raise self.fatal
            fetched = await self._consumer.getmany(
                timeout_ms=self.config.batch_max_wait_ms or 1,
                max_records=self.config.batch_max_records,
            )
            fetched_records = sum(len(records) for records in fetched.values())
            async with self._busy:
                parts = []
                for tp, records in fetched.items():
                    processor = self.processors.get(tp.partition)
                    if processor is None:  # revoked while the fetch was in flight
                        continue
                    process = processor.process
                    if self.process_in_thread:
                        parts.append(await asyncio.to_thread(process, records))
                    else:
                        parts.append(process(records))
                if parts:
                    effects = self.merge(parts)
                    await self._settle()  # at most one fetch's effects in flight
                    self._inflight = asyncio.create_task(self.apply(effects))
            await self.checkpointer.maybe(self.processors, self.drain)
            if self.pace_s and fetched_records < self.config.batch_max_records:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.pace_s)
        await self.drain()

    async def drain(self) -> None:
        """Wait for the effects in flight and every acknowledgement a checkpoint needs (and
        raise their error, if any): what a checkpoint or a release must see done."""
        await self._settle()
        unacked, self._unacked = self._unacked, []
        await asyncio.gather(*unacked)

    async def _settle(self) -> None:
        """Wait for the effects in flight (and raise their error, if any)."""
        task = self._inflight
        if task is None:
            return
        try:
            await task  # several may wait (run loop, rebalance listener): all see the outcome
        finally:
            if self._inflight is task:
                self._inflight = None

    async def send(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes, int | None]],
        *,
        ack_before_checkpoint: bool = False,
    ) -> None:
        """Send ``(key, value, partition)`` records to ``topic``. Wait for every
        acknowledgement now, or (``ack_before_checkpoint``) only before the next checkpoint
        or release: what a checkpoint covers is acknowledged either way."""
        assert self._producer is not None
        pending = [
            await self._producer.send(topic, value=v, key=k, partition=p) for k, v, p in records
        ]
        if ack_before_checkpoint:
            self._unacked.extend(pending)
        else:
            await asyncio.gather(*pending)

    async def send_dead_letters(self, topic: str, letters: Sequence[DeadLetter]) -> None:
        """Send to the DLQ ``topic`` and wait for every acknowledgement, then count them;
        a replayed record of ``self.topic`` whose letter the DLQ holds is not sent again."""
        assert self._producer is not None
        letters = self.letters_sent.fresh(letters)
        sends = [
            await self._producer.send(topic, value=d.record_value, key=d.key, headers=d.headers())
            for d in letters
        ]
        await asyncio.gather(*sends)
        self.dead_letters.update((d.topic, d.reason.value) for d in letters)

    async def dlq_end(self, dlq: str | None = None) -> int:
        """The end of ``dlq`` (this worker's by default) now: ``Checkpoint.dlq_from``."""
        assert self._consumer is not None
        return await dlq_end(self._consumer, dlq or self.dlq)

    async def _commit(self, topic: str, partition: int, offset: int) -> bool:
        """Commit the offset after ``offset``, whose effects a checkpoint on disk holds."""
        assert self._consumer is not None
        try:
            await self._consumer.commit({TopicPartition(topic, partition): offset + 1})
        except KafkaError as exc:  # informational only (lag); the checkpoint is the truth
            log.warning("offset commit failed (the checkpoint is written): %s", exc)
            return False
        return True
