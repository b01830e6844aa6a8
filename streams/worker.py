"""The stream worker: events -> window features -> Feast online and offline stores.

It runs as a faust-streaming app (lifecycle, signals, logging, the web server
for ``/metrics``), but the hot path does not go through faust's per-event
stream: faust caps a per-event agent at about 12-14k events/s here, far below
the broker. A faust service instead runs an aiokafka group consumer (faust's
own transport) that fetches micro-batches, so decode, kernels and store writes
all work on columns (``streams.partitioned``: ownership, checkpoints, delivery).

Each fetch ends in one offline part file, one online write, the accepted events
re-keyed by merchant for the merchant worker (``infra.merchant_rows``), then its
predictions and dead letters. The same app runs the merchant worker
(``streams.merchant_worker``) in its own consumer group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.feast_repo import apply_repo
from features.offline import OfflineWriter
from features.online import OnlineStore, open_online
from features.scoring_row import MerchantReader
from features.spec import DEFAULT_FEATURES, FeatureSpec
from features.state import WindowState
from infra.dead_letter_log import LettersSent, already_sent
from infra.merchant_rows import EVENTS, OUTCOMES, MerchantRows, by_partition
from infra.outcomes import decode_outcomes
from streams.checkpoint import Checkpoint
from streams.checkpoint_stores import open_checkpoints
from streams.config import WorkerConfig
from streams.merchant_worker import MerchantWorker
from streams.metrics import WorkerStats, render_metrics
from streams.partitioned import PartitionedWorker
from streams.processor import Counters, Effects, PartitionProcessor, merge_effects
from streams.scoring import StreamScorer

log = logging.getLogger(__name__)


class FeatureWorker(PartitionedWorker[PartitionProcessor, Effects]):
    """Consumes ``events`` in micro-batches and keeps the user feature stores current."""

    def __init__(self, config: WorkerConfig, specs: Sequence[FeatureSpec] = DEFAULT_FEATURES):
        super().__init__(
            config, topic=config.topics.events, dlq=config.topics.dlq, group=config.group
        )
        self.specs = tuple(specs)
        self.offline = OfflineWriter(config.stores.offline_dir)
        self.online: OnlineStore | None = None
        self.scorer = StreamScorer(config.stores.models_dir) if config.stream_scoring else None
        self.merchants: MerchantReader | None = None  # merchant features, for stream scoring
        self.totals = Counters()
        self.outcomes_stored = 0

    def stats(self) -> WorkerStats:
        """The counters now, as plain data for ``/metrics``."""
        return WorkerStats(
            accepted=self.totals.accepted,
            skipped_replays=self.totals.skipped_replays,
            duplicates=self.totals.duplicates,
            dead_letters=dict(self.dead_letters),
            partitions_owned=len(self.processors),
            outcomes_stored=self.outcomes_stored,
            store_errors=dict(self.store_retry.errors),
            stores_up=self.store_retry.up(),
            **self.states_held(),
        )

    def new_processor(self, partition: int, checkpoint: Checkpoint | None) -> PartitionProcessor:
        """The partition's processor, its window state restored from ``checkpoint`` (a whole
        checkpoint and its changes) if given."""
        config = self.config
        restored = None
        if checkpoint is not None:
            restored = WindowState.restore_chain(
                checkpoint.state, checkpoint.changes, self.specs,
                lateness_ms=config.lateness_ms, expiry=config.expiry,
            )  # fmt: skip
        return PartitionProcessor(
            topic=self.topic,
            partition=partition,
            specs=self.specs,
            lateness_ms=config.lateness_ms,
            expiry=config.expiry,
            rules=config.rules,
            state=restored,
            offset=-1 if checkpoint is None else checkpoint.offset,
        )

    def merge(self, parts: list[Effects]) -> Effects:
        """One fetch's effects; counts them."""
        effects = merge_effects(parts)
        self.totals.add(effects.counts)
        return effects

    async def prepare(self) -> None:
        """Apply the Feast repo (every view) and open the user view's online store."""
        store = await asyncio.to_thread(apply_repo, self.config.stores, self.specs)
        self.online = open_online(store, self.specs)
        if self.scorer is not None:
            self.merchants = MerchantReader(store)

    async def apply(self, effects: Effects) -> None:
        """Store writes of one fetch, its rows re-keyed by merchant, predictions, dead letters."""
        assert self.online is not None
        if len(effects.accepted):
            records = await asyncio.to_thread(self._store, effects)
            await self.send_merchant_records(records)
        if self.scorer is not None and self.merchants is not None and len(effects.accepted):
            accepted = effects.accepted
            merchants = await asyncio.to_thread(self.merchants.read, accepted.merchant_id)
            records = self.scorer.records(accepted, effects.features, merchants)
            await self.send(self.config.topics.predictions, [(k, v, None) for k, v in records])
        if effects.dead_letters:
            await self.send_dead_letters(self.dlq, effects.dead_letters)

    def merchant_records(self, rows: MerchantRows) -> list[tuple[None, bytes, int]]:
        """One ``merchant_rows`` record per merchant partition the rows are bound for, its
        rows in time order: a fetch holds several user partitions' rows one partition after
        another, and a merchant counts the rows that reached it before each of its rows."""
        if not len(rows):
            return []
        rows = rows.take(np.argsort(rows.time_ms, kind="stable"))
        parts = by_partition(rows, self.config.topics.partitions)
        return [(None, part.encode(), p) for p, part in parts.items()]

    async def send_merchant_records(
        self, records: list[tuple[None, bytes, int]], *, wait: bool = False
    ) -> None:
        """Send them, acknowledged before the next checkpoint, or now (``wait``: the outcome
        store acks its records to faust right after)."""
        # the next fetch need not wait for these acks (freshness), only the next checkpoint
        topic = self.config.topics.merchant_rows
        await self.send(topic, records, ack_before_checkpoint=not wait)

    def _store(self, effects: Effects) -> list[tuple[None, bytes, int]]:
        """Online first (what freshness waits for), then the offline part file, then the
        rows re-keyed by merchant, encoded; one thread hop per fetch."""
        online = self.online
        assert online is not None
        retry = self.store_retry
        retry.call(
            "online",
            lambda: online.write(
                entity_id=effects.online_user_id,
                event_time_ms=effects.online_event_time_ms,
                features=effects.online_features,
            ),
        )
        table = effects.offline(self.specs)
        first = effects.accepted
        tag = f"{int(first.partition[0]):04d}-{int(first.offset[0]):012d}"
        retry.call("offline", lambda: self.offline.write(table, tag=tag))
        return self.merchant_records(_event_rows(effects))


def _event_rows(effects: Effects) -> MerchantRows:
    """The accepted events as rows for their merchants."""
    good = effects.accepted
    return MerchantRows(
        np.full(len(good), EVENTS, dtype=np.int8),
        good.partition,
        good.offset,
        good.merchant_id,
        good.user_id,
        good.event_time_ms,
        good.amount,
        good.arrow_ids(),
    )


def _outcome_rows(table: pa.Table) -> MerchantRows:
    """The labels that name their merchant, as rows for it at their ``outcome_time``."""
    named = table.filter(pc.is_valid(table.column("merchant_id")))
    n = named.num_rows

    def col(name: str, dtype: type) -> np.ndarray:
        return named.column(name).to_numpy().astype(dtype)

    return MerchantRows(
        np.full(n, OUTCOMES, dtype=np.int8),
        col("kafka_partition", np.int32),
        col("kafka_offset", np.int64),
        col("merchant_id", np.int64),
        col("user_id", np.int64),
        named.column("outcome_timestamp").cast(pa.int64()).to_numpy(),
        col("label", np.float64),
        named.column("event_id").combine_chunks(),
    )


def _members_service(members: Sequence[PartitionedWorker]):
    """A mode service that opens ``members`` in order (the first applies the Feast repo the
    others open), joins their groups together, runs them, and stops them in reverse; one
    member's failure crashes it (and the process)."""
    from mode import Service

    class StreamWorkers(Service):
        async def on_start(self) -> None:
            for member in members:
                await member.open()
            await asyncio.gather(*(member.join() for member in members))
            for member in members:
                self.add_future(self._run(member))

        async def _run(self, member: PartitionedWorker) -> None:
            try:
                await member.run()
            except Exception as exc:
                log.exception("stream worker failed (%s)", member.topic)
                await self.crash(exc)

        async def on_stop(self) -> None:
            for member in reversed(members):
                await member.stop()

    return StreamWorkers


def build_app(config: WorkerConfig, specs: Sequence[FeatureSpec] = DEFAULT_FEATURES):
    """What ``featflow worker`` runs, by ``config.role``: a faust app hosting the feature
    worker (with the outcome store beside it) and the merchant worker (``all``), the feature
    worker alone (``users``), or a plain mode service of the merchant worker (``merchants``:
    faust cannot run an app that consumes no topic). Returns (app or service, feature worker)."""
    worker = FeatureWorker(config, specs)
    merchants = MerchantWorker(config)
    if config.role == "merchants":
        service = _members_service([merchants])()
        if config.web_port > 0:
            _metrics_thread(
                config.web_host,
                config.web_port,
                lambda: render_metrics(worker.stats(), merchants.stats()),
                merchants.started.is_set,
            )
        return service, worker
    import faust

    app = faust.App(
        f"{config.group}-faust",  # its own group: the DLQ watcher
        broker=f"kafka://{config.kafka.bootstrap}",
        broker_credentials=config.kafka.faust_credentials(),
        datadir=str(config.stores.faust_dir),
        web_enabled=config.web_port > 0,
        web_port=max(config.web_port, 1),
        web_bind=config.web_host,  # where it listens (web_host is only the advertised name)
        web_host=config.web_host,
        topic_disable_leader=True,
        broker_session_timeout=config.session_timeout_s,
        broker_heartbeat_interval=max(config.session_timeout_s / 6, 0.1),
        broker_rebalance_timeout=config.session_timeout_s * 2,
    )
    # the feature worker first: it applies the Feast repo the merchant worker opens
    members = [worker, *([merchants] if config.role == "all" else [])]
    app.service(_members_service(members))

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
            text = render_metrics(worker.stats(), merchants.stats())
            return web.text(text, content_type="text/plain; version=0.0.4")

        @app.page("/health")
        async def health(web, request):
            ready = all(member.started.is_set() for member in members)
            return web.json({"ready": ready}, status=200 if ready else 503)

    return app, worker


def _metrics_thread(
    host: str, port: int, render: Callable[[], str], ready: Callable[[], bool]
) -> None:
    """``GET /metrics`` and ``GET /health`` (200 once ``ready``, else 503) on
    ``host:port`` from a daemon thread (no faust web server)."""
    import http.server
    import threading

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                status, kind, body = 200, "text/plain; version=0.0.4", render().encode()
            elif self.path == "/health":
                up = ready()
                status, kind = (200 if up else 503), "application/json"
                body = b'{"ready": true}' if up else b'{"ready": false}'
            else:
                self.send_error(404)
                return
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, port), Metrics)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


class OutcomeStore:
    """Buffers outcome events, writes them as one part file, then acks them.

    After each flush it saves, per partition, the last offset flushed and where the DLQ
    stood (``Checkpoint``, no state). faust commits acked offsets a few seconds later, so a
    restart replays some outcomes already flushed: those are acked again and nothing more;
    the ones after them whose flush a crash cut short find their dead letters, if sent, in
    the DLQ (``infra.dead_letter_log``): each bad outcome is in ``outcomes.dlq`` once.
    """

    def __init__(self, config: WorkerConfig, worker: FeatureWorker, max_batch: int = 1000):
        self.config = config
        self.worker = worker
        self.max_batch = max_batch
        self.writer = OfflineWriter(config.stores.outcomes_dir)
        self.checkpoints = open_checkpoints(config.stores, config.kafka, config.topics)
        self.flushed: dict[int, int] = {}  # partition -> last offset flushed
        self.letters_sent = LettersSent()
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
            await self._restore({e.message.partition for e in events})
            new = [e for e in events if e.message.offset > self.flushed[e.message.partition]]
            if new:
                await self._flush(new)
            for event in events:  # the replayed ones were flushed before a restart
                event.ack()

    async def _flush(self, events: list) -> None:
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
        write = lambda: self.writer.write(table, tag=tag)  # noqa: E731
        await asyncio.to_thread(self.worker.store_retry.call, "offline", write)
        records = self.worker.merchant_records(_outcome_rows(table))
        await self.worker.send_merchant_records(records, wait=True)
        dead = self.letters_sent.fresh(dead)
        if dead:
            await self.worker.send_dead_letters(config.topics.outcomes_dlq, dead)
        dlq_from = await self.worker.dlq_end(config.topics.outcomes_dlq)
        last = {e.message.partition: e.message.offset for e in events}  # offsets ascend
        for partition, offset in last.items():
            checkpoint = Checkpoint(offset, b"", dlq_from)
            await asyncio.to_thread(
                self.checkpoints.save, config.topics.outcomes, partition, checkpoint
            )
            self.flushed[partition] = offset
        self.worker.outcomes_stored += table.num_rows

    async def _restore(self, partitions: set[int]) -> None:
        """Where the flushes of ``partitions`` stopped, for those seen for the first time or
        flushed since by another worker process (a rebalance), and which of their later
        records' letters the DLQ already holds."""
        topic, dlq = self.config.topics.outcomes, self.config.topics.outcomes_dlq
        after: dict[int, int] = {}
        dlq_from = None
        for partition in partitions:
            saved = await asyncio.to_thread(self.checkpoints.load, topic, partition)
            offset = -1 if saved is None else saved.offset
            if partition in self.flushed and offset <= self.flushed[partition]:
                continue  # nobody else flushed it: this process's position holds
            self.flushed[partition] = after[partition] = offset
            start = 0 if saved is None else saved.dlq_from
            dlq_from = start if dlq_from is None else min(dlq_from, start)
        if not after:
            return
        sent = await asyncio.to_thread(
            already_sent, self.config.kafka, dlq, dlq_from or 0, topic, after
        )
        self.letters_sent.add(topic, sent)
