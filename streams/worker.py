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
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from features.feast_repo import apply_repo
from features.offline import OfflineWriter
from features.online import OnlineStore, open_online
from features.spec import DEFAULT_FEATURES, FeatureSpec
from features.state import WindowState
from infra.config import PARTITION_FETCH_BYTES
from infra.dead_letter import DeadLetter
from infra.lag import log_end_offsets
from infra.outcomes import decode_outcomes
from infra.topics import ensure_topics
from streams.checkpoint import CheckpointStore
from streams.checkpointer import Checkpointer
from streams.config import WorkerConfig
from streams.metrics import WorkerStats, render_metrics
from streams.processor import Counters, Effects, PartitionProcessor, merge_effects
from streams.scoring import StreamScorer

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

    def __init__(self, config: WorkerConfig, specs: Sequence[FeatureSpec] = DEFAULT_FEATURES):
        self.config = config
        self.specs = tuple(specs)
        self.checkpoints = CheckpointStore(config.stores.checkpoint_dir)
        self.offline = OfflineWriter(config.stores.offline_dir)
        self.online: OnlineStore | None = None
        self.scorer = StreamScorer(config.stores.models_dir) if config.stream_scoring else None
        self.processors: dict[int, PartitionProcessor] = {}
        self.totals = Counters()
        # Dead letters the DLQ acknowledged, by (source topic, reason): what operators count.
        self.dead_letters: collections.Counter[tuple[str, str]] = collections.Counter()
        self.outcomes_stored = 0
        self.checkpointer = Checkpointer(
            self.checkpoints, config.checkpoint_interval_s, self._commit
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._inflight: asyncio.Task[None] | None = None  # the last fetch's store writes
        self._stopping = asyncio.Event()
        self.started = asyncio.Event()  # set once the producer and stores are ready
        self.fatal: BaseException | None = None  # raised by run(): the worker must stop

    def stats(self) -> WorkerStats:
        """The counters now, as plain data for ``/metrics``."""
        return WorkerStats(
            accepted=self.totals.accepted,
            skipped_replays=self.totals.skipped_replays,
            dead_letters=dict(self.dead_letters),
            partitions_owned=len(self.processors),
            outcomes_stored=self.outcomes_stored,
        )

    # -- partition ownership -------------------------------------------------
    async def acquire(self, partitions: list[TopicPartition]) -> None:
        """Take over ``partitions``: restore each from its checkpoint (or replay from the
        start) and seek past what the state holds."""
        assert self._consumer is not None
        for tp in partitions:
            if tp.topic != self.config.topics.events or tp.partition in self.processors:
                continue
            checkpoint = self.checkpoints.load(tp.topic, tp.partition)
            lateness_ms = self.config.lateness_ms
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
                rules=self.config.rules,
                state=state,
                offset=offset,
            )
            self.checkpointer.track(tp.partition, offset)
            log.info("acquired %s-%d at offset %d", tp.topic, tp.partition, offset)

    def _log_end(self, tp: TopicPartition) -> int:
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaTopicPartition

        probe = KafkaConsumer(bootstrap_servers=self.config.kafka.bootstrap)
        try:
            ktp = KafkaTopicPartition(tp.topic, tp.partition)
            return log_end_offsets(probe, [ktp])[ktp]
        finally:
            probe.close()

    async def release(self, partitions: list[TopicPartition]) -> None:
        """Give up ``partitions`` (revoked or stopping): drain the stores, then checkpoint each."""
        await self.drain()  # a checkpoint must not get ahead of the stores
        await self.checkpointer.settle()  # nor be overtaken by an older one
        for tp in partitions:
            processor = self.processors.pop(tp.partition, None)
            if processor is not None:
                self.checkpointer.save_now(processor)
                self.checkpointer.forget(tp.partition)
                log.info("released %s-%d at offset %d", tp.topic, tp.partition, processor.offset)

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        """Create topics, apply the Feast repo, connect the producer and join the consumer group."""
        config = self.config
        await asyncio.to_thread(ensure_topics, config.kafka, config.topics)
        store = await asyncio.to_thread(apply_repo, config.stores, self.specs)
        self.online = open_online(store, self.specs)
        self._producer = AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap, acks="all")
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=config.kafka.bootstrap,
            group_id=config.group,
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
        self._consumer.subscribe([config.topics.events], listener=_Rebalance(self))
        await self._consumer.start()
        # Start-up objects (faust, Feast, aiokafka: ~200k) live as long as the process; a
        # full collection walks them in ~130 ms, a stall in the hot path. Freeze them.
        gc.collect()
        gc.freeze()
        self.started.set()

    async def stop(self) -> None:
        """Checkpoint every owned partition and close the Kafka clients."""
        self._stopping.set()
        if self._consumer is not None:
            await self.release(
                [TopicPartition(self.config.topics.events, p) for p in self.processors]
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
                timeout_ms=self.config.batch_max_wait_ms or 1,
                max_records=self.config.batch_max_records,
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
            await self.checkpointer.maybe(self.processors, self.drain)
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
            topic = self.config.topics.predictions
            pending = [await self._producer.send(topic, value=v, key=k) for k, v in records]
            await asyncio.gather(*pending)  # delivered before the checkpoint moves past them
        if effects.dead_letters:
            await self.send_dead_letters(self.config.topics.dlq, effects.dead_letters)

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
            await self._producer.send(topic, value=d.record_value, key=d.key, headers=d.headers())
            for d in letters
        ]
        await asyncio.gather(*sends)
        self.dead_letters.update((d.topic, d.reason.value) for d in letters)

    async def _commit(self, topic: str, partition: int, offset: int) -> bool:
        """Commit the offset after ``offset``, whose effects a checkpoint on disk holds."""
        assert self._consumer is not None
        try:
            await self._consumer.commit({TopicPartition(topic, partition): offset + 1})
        except KafkaError as exc:  # informational only (lag); the checkpoint is the truth
            log.warning("offset commit failed (the checkpoint is written): %s", exc)
            return False
        return True


def build_app(config: WorkerConfig, specs: Sequence[FeatureSpec] = DEFAULT_FEATURES):
    """The faust app hosting a :class:`FeatureWorker` as a service."""
    import faust
    from mode import Service

    app = faust.App(
        f"{config.group}-faust",  # its own group: the DLQ watcher
        broker=f"kafka://{config.kafka.bootstrap}",
        datadir=str(config.stores.faust_dir),
        web_enabled=config.web_port > 0,
        web_port=max(config.web_port, 1),
        web_host="127.0.0.1",
        topic_disable_leader=True,
        broker_session_timeout=config.session_timeout_s,
        broker_heartbeat_interval=max(config.session_timeout_s / 6, 0.1),
        broker_rebalance_timeout=config.session_timeout_s * 2,
    )
    worker = FeatureWorker(config, specs)

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
    outcomes = app.topic(config.topics.outcomes, key_serializer="raw", value_serializer="raw")
    store = OutcomeStore(config, worker)

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

    if config.web_port > 0:

        @app.page("/metrics")
        async def metrics(web, request):
            text = render_metrics(worker.stats())
            return web.text(text, content_type="text/plain; version=0.0.4")

    return app, worker


class OutcomeStore:
    """Buffers outcome events, writes them as one part file, then acks them."""

    def __init__(self, config: WorkerConfig, worker: FeatureWorker, max_batch: int = 1000):
        self.config = config
        self.worker = worker
        self.max_batch = max_batch
        self.writer = OfflineWriter(config.stores.outcomes_dir)
        self._events: list = []
        self._lock = asyncio.Lock()

    async def add(self, event) -> None:
        """Buffer one outcome event; a full buffer is flushed."""
        self._events.append(event)
        if len(self._events) >= self.max_batch:
            await self.flush()

    async def flush(self) -> None:
        """Decode the buffered outcomes, write one part file, dead-letter the bad ones, ack all."""
        await self.worker.started.wait()  # faust may start agents before our service
        async with self._lock:
            events, self._events = self._events, []
            if not events:
                return
            config = self.config
            table, dead = decode_outcomes(
                [e.value for e in events],
                partitions=[e.message.partition for e in events],
                offsets=[e.message.offset for e in events],
                topic=config.topics.outcomes,
                rules=config.rules,
                keys=[e.message.key for e in events],
            )
            first = events[0].message
            tag = f"{first.partition:04d}-{first.offset:012d}"
            await asyncio.to_thread(self.writer.write, table, tag=tag)
            if dead:
                await self.worker.send_dead_letters(config.topics.outcomes_dlq, dead)
            self.worker.outcomes_stored += table.num_rows
            for event in events:
                event.ack()
