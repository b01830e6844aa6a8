"""The stream worker: events -> window features -> Feast online and offline stores.

It runs as a faust-streaming app (lifecycle, signals, logging, the web server
for ``/metrics``), but the hot path does not go through faust's per-event
stream: faust caps a per-event agent at about 12-14k events/s here, far below
the broker. A faust service instead runs an aiokafka group consumer (faust's
own transport) that fetches micro-batches, so decode, kernels and store writes
all work on columns.

Delivery is at-least-once with idempotent effects. Each fetch (all its
partitions together) ends in one offline part file, one online write, then its
predictions and dead letters; those writes run while the next fetch is decoded
and processed (one fetch in flight at most). Every ``checkpoint_interval_s``,
after waiting for the writes in flight, the worker saves each partition's state
with the offset it reflects, and only then commits that offset to Kafka. On (re)start or
rebalance a partition resumes from its checkpoint: later records are replayed
into the state as it was before them, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from featflow.settings import Settings
from features.feast_repo import apply_repo
from features.offline import OfflineWriter
from features.online import OnlineWriter, open_online_writer
from features.spec import DEFAULT_FEATURES, FeatureSpec
from features.state import Snapshot, WindowState
from streams.checkpoint import Checkpoint, CheckpointStore
from streams.dead_letter import DeadLetter
from streams.lag import log_end_offsets
from streams.outcomes import decode_outcomes
from streams.processor import Counters, Effects, PartitionProcessor, merge_effects
from streams.scoring import StreamScorer
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: FeatureWorker):
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.worker.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # aiokafka logs and swallows listener errors; hand them to the run loop.
        try:
            await self.worker.acquire(assigned)
        except Exception as exc:
            self.worker.fatal = exc


class FeatureWorker:
    """Consumes ``events`` in micro-batches and keeps the feature stores current."""

    def __init__(self, settings: Settings, specs: Sequence[FeatureSpec] = DEFAULT_FEATURES):
        self.settings = settings
        self.specs = tuple(specs)
        self.checkpoints = CheckpointStore(settings.checkpoint_dir)
        self.offline = OfflineWriter(settings.offline_dir)
        self.online: OnlineWriter | None = None
        self.scorer = StreamScorer(settings) if settings.stream_scoring else None
        self.processors: dict[int, PartitionProcessor] = {}
        self.totals = Counters()
        # Dead letters the DLQ acknowledged, by (source topic, reason): what operators count.
        self.dead_letters: collections.Counter[tuple[str, str]] = collections.Counter()
        self.outcomes_stored = 0
        self._last_checkpoint: dict[int, float] = {}
        self._checkpointed: dict[int, int] = {}  # offset of each partition's newest checkpoint
        # Offset each partition's state reflects as last committed by this worker; -1 until
        # its first commit: a SIGKILL between a checkpoint and its commit leaves the group's
        # offset behind the checkpoint, which must be committed even if nothing new arrives.
        self._committed: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._inflight: asyncio.Task[None] | None = None  # the last fetch's store writes
        self._checkpointing: asyncio.Task[None] | None = None  # a checkpoint being written
        self._stopping = asyncio.Event()
        self.started = asyncio.Event()  # set once the producer and stores are ready
        self.fatal: BaseException | None = None  # raised by run(): the worker must stop

    # -- partition ownership -------------------------------------------------
    async def acquire(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        for tp in partitions:
            if tp.topic != self.settings.events_topic or tp.partition in self.processors:
                continue
            checkpoint = self.checkpoints.load(tp.topic, tp.partition)
            lateness_ms = int(self.settings.allowed_lateness_s * 1000)
            if checkpoint is None:
                state = WindowState(self.specs, lateness_ms=lateness_ms)
                offset = -1
                # Without a checkpoint the state is empty, so the history must be
                # replayed from the start whatever offset the group committed.
                await self._consumer.seek_to_beginning(tp)
            else:
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
                state = WindowState.restore(checkpoint.state, self.specs)
                offset = checkpoint.offset
                self._consumer.seek(tp, offset + 1)
            self.processors[tp.partition] = PartitionProcessor(
                topic=tp.topic,
                partition=tp.partition,
                specs=self.specs,
                lateness_ms=lateness_ms,
                rules=self.settings.event_rules,
                state=state,
                offset=offset,
            )
            self._last_checkpoint[tp.partition] = time.monotonic()
            self._checkpointed[tp.partition] = offset
            self._committed[tp.partition] = -1
            log.info("acquired %s-%d at offset %d", tp.topic, tp.partition, offset)

    def _log_end(self, tp: TopicPartition) -> int:
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaTopicPartition

        probe = KafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap)
        try:
            ktp = KafkaTopicPartition(tp.topic, tp.partition)
            return log_end_offsets(probe, [ktp])[ktp]
        finally:
            probe.close()

    async def release(self, partitions: list[TopicPartition]) -> None:
        await self.drain()  # a checkpoint must not get ahead of the stores
        await self._settle_checkpoints()  # nor be overtaken by an older one
        for tp in partitions:
            processor = self.processors.pop(tp.partition, None)
            if processor is not None:
                self._save(processor)
                log.info("released %s-%d at offset %d", tp.topic, tp.partition, processor.offset)

    def _save(self, processor: PartitionProcessor) -> None:
        self.checkpoints.save(
            processor.topic,
            processor.partition,
            Checkpoint(offset=processor.offset, state=processor.state.snapshot()),
        )
        self._last_checkpoint[processor.partition] = time.monotonic()
        self._checkpointed[processor.partition] = processor.offset

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        settings = self.settings
        await asyncio.to_thread(ensure_topics, settings)
        store = await asyncio.to_thread(apply_repo, settings, self.specs)
        self.online = open_online_writer(store, self.specs)
        self._producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # A SIGKILLed member must leave the group quickly: the broker waits up to
            # the rebalance timeout for members to rejoin (Tansu waits all of it).
            session_timeout_ms=int(settings.group_session_timeout_s * 1000),
            heartbeat_interval_ms=max(int(settings.group_session_timeout_s * 1000) // 6, 100),
            rebalance_timeout_ms=int(settings.group_session_timeout_s * 2000),
            fetch_max_wait_ms=max(settings.batch_max_wait_ms, 1),
        )
        self._consumer.subscribe([settings.events_topic], listener=_Rebalance(self))
        await self._consumer.start()
        # Start-up objects (faust, Feast, aiokafka: ~200k) live as long as the process; a
        # full collection walks them in ~130 ms, a stall in the hot path. Freeze them.
        gc.collect()
        gc.freeze()
        self.started.set()

    async def stop(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            await self.release(
                [TopicPartition(self.settings.events_topic, p) for p in self.processors]
            )
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
                timeout_ms=self.settings.batch_max_wait_ms or 1,
                max_records=self.settings.batch_max_records,
            )
            parts = []
            for tp, records in fetched.items():
                processor = self.processors.get(tp.partition)
                if processor is None:  # revoked while the fetch was in flight
                    continue
                parts.append(processor.process(records))
            if parts:
                effects = merge_effects(parts)
                await self.drain()  # at most one batch's effects in flight
                self._inflight = asyncio.create_task(self._apply(effects))
                self.totals.add(effects.counts)
            await self._maybe_checkpoint()
        await self.drain()

    async def drain(self) -> None:
        """Wait for the effects in flight (and raise their error, if any)."""
        task = self._inflight
        if task is None:
            return
        try:
            await task  # several may wait (run loop, rebalance listener): all see the outcome
        finally:
            if self._inflight is task:
                self._inflight = None

    async def _apply(self, effects: Effects) -> None:
        """Store writes of one fetch; runs while the next fetch is decoded and processed."""
        assert self.online is not None and self._producer is not None
        if len(effects.accepted):
            await asyncio.to_thread(self._store, effects)
        if self.scorer is not None and len(effects.accepted):
            records = self.scorer.records(effects.accepted, effects.features)
            topic = self.settings.predictions_topic
            pending = [await self._producer.send(topic, value=v, key=k) for k, v in records]
            await asyncio.gather(*pending)  # delivered before the checkpoint moves past them
        if effects.dead_letters:
            await self.send_dead_letters(self.settings.dlq_topic, effects.dead_letters)

    def _store(self, effects: Effects) -> None:
        """Online first (what freshness waits for), then the offline part file; one thread
        hop per fetch."""
        assert self.online is not None
        self.online.write(
            user_id=effects.online_user_id,
            event_time_ms=effects.online_event_time_ms,
            features=effects.online_features,
        )
        table = effects.offline(self.specs)
        first = effects.accepted
        self.offline.write(table, tag=f"{int(first.partition[0]):04d}-{int(first.offset[0]):012d}")

    async def send_dead_letters(self, topic: str, letters: Sequence[DeadLetter]) -> None:
        """Send to the DLQ ``topic`` and wait for every acknowledgement, then count them."""
        assert self._producer is not None
        sends = [
            await self._producer.send(topic, value=d.value, key=d.key, headers=d.headers())
            for d in letters
        ]
        await asyncio.gather(*sends)
        self.dead_letters.update((d.topic, d.reason.value) for d in letters)

    async def _maybe_checkpoint(self) -> None:
        """Checkpoint the most overdue partition, if any is due.

        Its state is copied here, between fetches, after the effects it reflects are stored;
        encoding and the file (write, fsync, rename, fsync of the directory) happen in a
        thread while fetches go on. One partition per pass spreads the copies: done all at
        once in the loop, 8 partitions' snapshots and fsyncs stalled it for 100-200 ms every
        interval, the p99 of freshness (and seconds for a state of 1M users).
        """
        assert self._consumer is not None
        if self._checkpointing is not None:
            if not self._checkpointing.done():
                return  # one file at a time
            await self._settle_checkpoints()  # raises the write's error, if any
        if not self.processors:
            return
        processor = min(self.processors.values(), key=lambda p: self._last_checkpoint[p.partition])
        now = time.monotonic()
        if now - self._last_checkpoint[processor.partition] < self.settings.checkpoint_interval_s:
            return
        self._last_checkpoint[processor.partition] = now
        if processor.offset == self._checkpointed[processor.partition]:
            # No new record since: the checkpoint on disk is this state; commit it if not yet.
            if self._committed[processor.partition] < processor.offset:
                await self._commit(processor.topic, processor.partition, processor.offset)
            return
        await self.drain()  # the snapshot below reflects effects that must be stored first
        snapshot = processor.state.capture()
        self._checkpointed[processor.partition] = processor.offset
        self._checkpointing = asyncio.create_task(
            self._write_checkpoint(processor.topic, processor.partition, processor.offset, snapshot)
        )

    async def _write_checkpoint(
        self, topic: str, partition: int, offset: int, snapshot: Snapshot
    ) -> None:
        def write() -> None:
            self.checkpoints.save(topic, partition, Checkpoint(offset, snapshot.encode()))

        await asyncio.to_thread(write)
        await self._commit(topic, partition, offset)

    async def _commit(self, topic: str, partition: int, offset: int) -> None:
        """Commit the offset after ``offset``, whose effects a checkpoint on disk holds."""
        if offset < 0:
            return
        assert self._consumer is not None
        try:
            await self._consumer.commit({TopicPartition(topic, partition): offset + 1})
        except KafkaError as exc:  # informational only (lag); the checkpoint is the truth
            log.warning("offset commit failed (the checkpoint is written): %s", exc)
            return
        if partition in self._committed:  # not if revoked meanwhile
            self._committed[partition] = max(self._committed[partition], offset)

    async def _settle_checkpoints(self) -> None:
        """Wait for the checkpoint files being written (and raise their error, if any)."""
        task = self._checkpointing
        if task is None:
            return
        try:
            await task
        finally:
            if self._checkpointing is task:
                self._checkpointing = None


def build_app(settings: Settings, specs: Sequence[FeatureSpec] = DEFAULT_FEATURES):
    """The faust app hosting a :class:`FeatureWorker` as a service."""
    import faust
    from mode import Service

    app = faust.App(
        f"{settings.consumer_group}-faust",  # its own group: the DLQ watcher
        broker=f"kafka://{settings.kafka_bootstrap}",
        datadir=str(settings.home / "faust"),
        web_enabled=settings.worker_web_port > 0,
        web_port=max(settings.worker_web_port, 1),
        web_host="127.0.0.1",
        topic_disable_leader=True,
        broker_session_timeout=settings.group_session_timeout_s,
        broker_heartbeat_interval=max(settings.group_session_timeout_s / 6, 0.1),
        broker_rebalance_timeout=settings.group_session_timeout_s * 2,
    )
    worker = FeatureWorker(settings, specs)

    class FeatureService(Service):
        async def on_start(self) -> None:
            await worker.start()
            self.add_future(self._run())

        async def _run(self) -> None:
            try:
                await worker.run()
            except Exception as exc:
                log.exception("stream worker failed")
                await self.crash(exc)

        async def on_stop(self) -> None:
            await worker.stop()

    app.service(FeatureService)

    # Outcomes are low volume: a faust per-event agent stores them (parquet parts
    # under $FEATFLOW_HOME/outcomes) and dead-letters bad ones to outcomes.dlq.
    # Events are acked only after their batch is written (at-least-once; readers
    # keep the last label per event_id). A timer flushes the tail of the stream:
    # faust's take_events held the last records back until more arrived.
    outcomes = app.topic(settings.outcomes_topic, key_serializer="raw", value_serializer="raw")
    store = OutcomeStore(settings, worker)

    @app.agent(outcomes)
    async def store_outcomes(stream):
        async for event in stream.noack().events():
            await store.add(event)

    @app.timer(interval=1.0)
    async def flush_outcomes() -> None:
        # Not before the worker's producer exists: waiting here for the worker's start-up
        # (Feast apply, ~5 s) made faust warn that the timer was overlapping.
        if worker.started.is_set():
            await store.flush()

    if settings.worker_web_port > 0:
        from streams.metrics import render_metrics

        @app.page("/metrics")
        async def metrics(web, request):
            return web.text(render_metrics(worker), content_type="text/plain; version=0.0.4")

    return app, worker


class OutcomeStore:
    """Buffers outcome events, writes them as one part file, then acks them."""

    def __init__(self, settings: Settings, worker: FeatureWorker, max_batch: int = 1000):
        self.settings = settings
        self.worker = worker
        self.max_batch = max_batch
        self.writer = OfflineWriter(settings.outcomes_dir)
        self._events: list = []
        self._lock = asyncio.Lock()

    async def add(self, event) -> None:
        self._events.append(event)
        if len(self._events) >= self.max_batch:
            await self.flush()

    async def flush(self) -> None:
        await self.worker.started.wait()  # faust may start agents before our service
        async with self._lock:
            events, self._events = self._events, []
            if not events:
                return
            settings = self.settings
            table, dead = decode_outcomes(
                [e.value for e in events],
                partitions=[e.message.partition for e in events],
                offsets=[e.message.offset for e in events],
                topic=settings.outcomes_topic,
                rules=settings.event_rules,
            )
            first = events[0].message
            tag = f"{first.partition:04d}-{first.offset:012d}"
            await asyncio.to_thread(self.writer.write, table, tag=tag)
            if dead:
                await self.worker.send_dead_letters(f"{settings.outcomes_topic}.dlq", dead)
            self.worker.outcomes_stored += table.num_rows
            for event in events:
                event.ack()
