"""The monitor service: predictions and outcomes in; snapshots, metrics and retraining
requests out (``featflow monitor``).

One process reads every partition of ``predictions`` and ``outcomes`` (assigned, not a
group: the state is one per model version, not per partition), decodes each record
(bad predictions go to ``predictions.dlq`` with their reason; bad outcomes are counted, and
dead-lettered by the worker that stores outcomes, so each is in ``outcomes.dlq`` once) and feeds
:class:`~monitoring.core.MonitorCore`. Every ``interval_s`` it takes a snapshot: the rows
go to a parquet part file under ``$FEATFLOW_HOME/monitoring/`` and, one JSON record per
row, to topic ``monitoring``; a retraining request the policy fires goes to topic
``retrain``; the predictions read since the last snapshot go to one parquet part file
under ``predictions/``; then the core's state and the last offset read of every partition
are saved in one atomic checkpoint. A restarted monitor restores that checkpoint and resumes after
those offsets, so it neither loses nor double-counts a joined pair; what it read after the
checkpoint is read again into the state as it was before it, and a bad prediction read again
finds its dead letter already in the DLQ (``infra.dead_letter_log``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka.errors import KafkaError

from inference.model_events import FILENAME, KINDS, ModelEvents
from inference.registry import ModelRegistry
from infra.config import PARTITION_FETCH_BYTES
from infra.dead_letter import DeadLetter
from infra.dead_letter_log import LettersSent, already_sent, dlq_end
from infra.lag import group_lag
from infra.outcomes import check_outcomes
from infra.predictions import Prediction, decode_predictions
from infra.topics import ensure_topics
from monitoring.core import ALL_VERSIONS, ModelBook, MonitorCore, registry_book
from monitoring.join import Label
from monitoring.snapshot import MetricRow
from streams.checkpoint import Checkpoint
from streams.checkpoint_stores import open_checkpoints
from streams.config import MonitorConfig

log = logging.getLogger(__name__)

WORKER_LAG_EVERY_S = 15.0  # how often the worker group's lag is measured
CHECKPOINT_NAME = "monitor"  # one checkpoint file: the whole state, every partition's offset
SNAPSHOT_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("ms", tz="UTC")),
        ("model_version", pa.string()),
        ("metric", pa.string()),
        ("feature", pa.string()),
        ("value", pa.float64()),
        ("samples", pa.int64()),
    ]
)
_encoder = msgspec.json.Encoder()


class _Saved(msgspec.Struct):
    core: bytes
    offsets: list[tuple[str, int, int]]  # (topic, partition, last offset read)


class Monitor:
    """The monitor service around a :class:`MonitorCore`."""

    def __init__(self, config: MonitorConfig, book: ModelBook | None = None) -> None:
        self.config = config
        self.book = book or registry_book(ModelRegistry(config.stores.models_dir))
        self.core = MonitorCore(
            self.book,
            horizon_ms=int(config.horizon_s * 1000),
            window_labels=config.window_labels,
            window_events=config.window_events,
            policy=config.policy,
        )
        self.checkpoints = open_checkpoints(config.stores, config.kafka, config.topics)
        self.offsets: dict[tuple[str, int], int] = {}
        self.consumed: Counter[str] = Counter()  # records read, by topic
        self.dead_letters: Counter[tuple[str, str]] = Counter()  # (source topic, reason)
        self.outcomes_refused: Counter[str] = Counter()  # by reason; the worker dead-letters
        self.letters_sent = LettersSent()
        self.snapshots = 0
        self.requests = 0
        self.history = ModelHistory(config.stores.models_dir)
        self.latest: list[MetricRow] = []
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._lag = float("nan")  # the worker group's lag, as last measured
        self._lag_task: asyncio.Task[int] | None = None
        self._lag_started = float("-inf")
        # predictions read since the last snapshot: (prediction, partition, offset)
        self._unstored: list[tuple[Prediction, int, int]] = []

    def stop(self) -> None:
        """Ask :meth:`run` to take a last snapshot and return."""
        self._stop.set()

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Consume until :meth:`stop`; a snapshot and checkpoint every ``interval_s``."""
        cfg = self.config
        await asyncio.to_thread(ensure_topics, cfg.kafka, cfg.topics)
        self._consumer = AIOKafkaConsumer(
            **cfg.kafka.aio_args(), enable_auto_commit=False, group_id=None,
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        )  # fmt: skip
        self._producer = AIOKafkaProducer(**cfg.kafka.aio_args(), linger_ms=5)
        await self._consumer.start()
        await self._producer.start()
        web = await self._start_web() if cfg.web_port else None
        try:
            await self._assign_and_restore()
            await asyncio.to_thread(_warm_parquet)
            self.started.set()
            next_at = time.monotonic() + cfg.interval_s
            while not self._stop.is_set():
                wait_ms = max(1, min(200, int((next_at - time.monotonic()) * 1000)))
                fetched = await self._consumer.getmany(
                    timeout_ms=wait_ms, max_records=cfg.batch_max_records
                )
                await self._process(fetched)
                if time.monotonic() >= next_at:
                    await self.snapshot()
                    next_at = time.monotonic() + cfg.interval_s
            await self.snapshot(final=True)
        finally:
            if self._lag_task is not None:
                self._lag_task.cancel()
            if web is not None:
                await web.cleanup()
            await self._consumer.stop()
            await self._producer.stop()

    async def _assign_and_restore(self) -> None:
        assert self._consumer is not None
        topics = self.config.topics
        parts = [
            TopicPartition(topic, p)
            for topic in (topics.predictions, topics.outcomes)
            for p in range(topics.partitions)
        ]
        self._consumer.assign(parts)
        saved = await asyncio.to_thread(self.checkpoints.load, CHECKPOINT_NAME, 0)
        if saved is not None:
            state = msgspec.msgpack.decode(saved.state, type=_Saved)
            self.core.restore(state.core)
            self.offsets = {(t, p): o for t, p, o in state.offsets}
        replay_after = {
            tp.partition: self.offsets.get((tp.topic, tp.partition), -1)
            for tp in parts
            if tp.topic == topics.predictions
        }
        sent = await asyncio.to_thread(
            already_sent,
            self.config.kafka,
            topics.predictions_dlq,
            0 if saved is None else saved.dlq_from,
            topics.predictions,
            replay_after,
        )
        self.letters_sent.add(topics.predictions, sent)
        for tp in parts:
            last = self.offsets.get((tp.topic, tp.partition))
            if last is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, last + 1)

    async def _process(self, fetched: dict[TopicPartition, list]) -> None:
        topics, rules = self.config.topics, self.config.rules
        # predictions before outcomes in each fetch: an outcome then finds what it labels
        for tp in sorted(fetched, key=lambda t: (t.topic != topics.predictions, t.partition)):
            msgs = fetched[tp]
            if not msgs:
                continue
            values = [m.value for m in msgs]
            keys = [m.key for m in msgs]
            parts = [tp.partition] * len(msgs)
            offsets = [m.offset for m in msgs]
            if tp.topic == topics.predictions:
                good, dead = decode_predictions(
                    values, partitions=parts, offsets=offsets, topic=tp.topic, rules=rules,
                    keys=keys,
                )  # fmt: skip
                self.core.add_predictions(good)
                refused = {d.offset for d in dead}
                kept = [o for o in offsets if o not in refused]
                self._unstored += [(p, tp.partition, o) for p, o in zip(good, kept, strict=True)]
                await self._dead(topics.predictions_dlq, dead)
            else:
                checked, dead = check_outcomes(
                    values, partitions=parts, offsets=offsets, topic=tp.topic, rules=rules,
                    keys=keys,
                )  # fmt: skip
                self.core.add_outcomes(
                    [Label(o.event_id, o.prediction_id, o.label, t) for o, t, _, _ in checked]
                )
                self.outcomes_refused.update(d.reason.value for d in dead)
            self.consumed[tp.topic] += len(msgs)
            self.offsets[(tp.topic, tp.partition)] = msgs[-1].offset

    async def _dead(self, topic: str, letters: list[DeadLetter]) -> None:
        assert self._producer is not None
        letters = self.letters_sent.fresh(letters)
        if not letters:
            return
        sends = [
            await self._producer.send(topic, value=d.record_value, key=d.key, headers=d.headers())
            for d in letters
        ]
        await asyncio.gather(*sends)
        self.dead_letters.update((d.topic, d.reason.value) for d in letters)

    # ------------------------------------------------------------------ snapshot

    async def snapshot(self, final: bool = False) -> list[MetricRow]:
        """Take a snapshot now: parquet, topic ``monitoring``, a retraining request if the
        policy fires, then the checkpoint. ``final`` (on stop) waits for a fresh worker lag."""
        assert self._producer is not None
        now_ms = int(time.time() * 1000)
        rows, fired = self.core.snapshot(now_ms)
        rows += self._service_rows(now_ms)
        if self.config.worker_group is not None:
            rows.append(await self._worker_lag(now_ms, wait=final))
        await asyncio.to_thread(self._write_parquet, rows, now_ms)
        topics = self.config.topics
        for row in rows:
            await self._producer.send(
                topics.monitoring, value=_encoder.encode(row), key=row.model_version.encode()
            )
        if fired is not None:
            request = {
                "request_id": uuid.uuid4().hex,
                "time_ms": fired.time_ms,
                "model_version": fired.model_version,
                "event_time_ms": self.core.newest_ms,
                "reason": fired.reason,
                "values": fired.values,
            }
            await self._producer.send(topics.retrain, value=_encoder.encode(request))
            self.requests += 1
            log.warning("retraining requested for %s: %s", fired.model_version, fired.reason)
        await self._producer.flush()
        unstored, self._unstored = self._unstored, []
        await asyncio.to_thread(self._store_predictions, unstored)
        saved = _Saved(self.core.state(), [(t, p, o) for (t, p), o in self.offsets.items()])
        assert self._consumer is not None
        dlq_from = await dlq_end(self._consumer, topics.predictions_dlq)  # letters are acked
        checkpoint = Checkpoint(-1, msgspec.msgpack.encode(saved), dlq_from)
        await asyncio.to_thread(self.checkpoints.save, CHECKPOINT_NAME, 0, checkpoint)
        self.snapshots += 1
        self.latest = rows
        return rows

    def _service_rows(self, now_ms: int) -> list[MetricRow]:
        """What only the service knows: its consumer lag and dead letters (version ``*``)."""
        assert self._consumer is not None
        rows = []
        lag = 0
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None:
                lag += max(0, high - self.offsets.get((tp.topic, tp.partition), -1) - 1)
        rows.append(MetricRow(now_ms, ALL_VERSIONS, "consumer_lag", None, float(lag), lag))
        for (topic, reason), n in sorted(self.dead_letters.items()):
            rows.append(
                MetricRow(now_ms, ALL_VERSIONS, "dead_letters", f"{topic}/{reason}", float(n), n)
            )
        for reason, n in sorted(self.outcomes_refused.items()):
            rows.append(MetricRow(now_ms, ALL_VERSIONS, "outcomes_refused", reason, float(n), n))
        return rows

    async def _worker_lag(self, now_ms: int, wait: bool = False) -> MetricRow:
        """The feature worker group's records of ``events`` not yet checkpointed, as last
        measured (NaN until a first answer, or when the broker does not answer in time).

        Measuring opens a client and reads the partitions' ends (~0.3 s of this process's
        time), so it runs beside the consumer at most every ``WORKER_LAG_EVERY_S``, never in
        the snapshot's way; ``wait`` (the last snapshot) measures now.
        """
        cfg = self.config
        assert cfg.worker_group is not None
        task = self._lag_task
        due = time.monotonic() - self._lag_started >= WORKER_LAG_EVERY_S
        if task is None and (due or wait):
            self._lag_started = time.monotonic()
            task = self._lag_task = asyncio.create_task(
                asyncio.wait_for(
                    asyncio.to_thread(group_lag, cfg.kafka, cfg.worker_group, cfg.topics.events),
                    timeout=cfg.kafka.connect_timeout_s,
                )
            )
        if task is not None and (task.done() or wait):
            self._lag_task = None
            try:
                self._lag = float(await task)
            except (TimeoutError, KafkaError) as exc:
                log.warning("worker lag unknown: %s", exc)
                self._lag = float("nan")
        lag = self._lag
        samples = 0 if lag != lag else int(lag)
        return MetricRow(now_ms, ALL_VERSIONS, "worker_lag", None, lag, samples)

    def _store_predictions(self, rows: list[tuple[Prediction, int, int]]) -> None:
        """The valid predictions read since the last snapshot as one parquet part file under
        ``predictions/``, written before the checkpoint (for analysts; after a crash between
        the two, a record is written again: keep one row per ``kafka_partition,
        kafka_offset``, as for the offline features)."""
        if not rows:
            return
        good = [p for p, _, _ in rows]
        folder = self.config.stores.predictions_dir
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "prediction_id": [p.prediction_id for p in good],
                "event_id": [p.event_id for p in good],
                "user_id": pa.array([p.user_id for p in good], pa.int64()),
                "model_version": [p.model_version for p in good],
                "role": [p.role for p in good],
                "score": pa.array([p.score for p in good], pa.float64()),
                "features_found": [p.features_found for p in good],
                "time": pa.array([p.time_ms for p in good], pa.timestamp("ms", tz="UTC")),
                "prediction_time": pa.array(
                    [p.prediction_time for p in good], pa.timestamp("ms", tz="UTC")
                ),
                "kafka_partition": pa.array([part for _, part, _ in rows], pa.int32()),
                "kafka_offset": pa.array([off for _, _, off in rows], pa.int64()),
            }
        )
        name = f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:6]}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, folder / name)

    def _write_parquet(self, rows: list[MetricRow], now_ms: int) -> Path | None:
        if not rows:
            return None
        folder = self.config.stores.monitoring_dir
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "time": pa.array([r.time_ms for r in rows], pa.timestamp("ms", tz="UTC")),
                "model_version": [r.model_version for r in rows],
                "metric": [r.metric for r in rows],
                "feature": [r.feature for r in rows],
                "value": pa.array([r.value for r in rows], pa.float64()),
                "samples": pa.array([r.samples for r in rows], pa.int64()),
            },
            schema=SNAPSHOT_SCHEMA,
        )
        final = folder / f"snapshot-{now_ms}-{uuid.uuid4().hex[:6]}.parquet"
        tmp = folder / f".{final.name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        return final

    # ------------------------------------------------------------------ web

    async def _start_web(self):  # -> aiohttp.web.AppRunner
        from aiohttp import web

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=render_monitor_metrics(self), content_type="text/plain")

        async def health(_: web.Request) -> web.Response:
            ready = self.started.is_set()  # assigned, restored from its checkpoint
            return web.json_response({"ready": ready}, status=200 if ready else 503)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, self.config.web_host, self.config.web_port).start()
        return runner


class ModelHistory:
    """The model history's decisions by kind, for ``/metrics``: how many, and when the newest
    was (promotions and rollbacks by the trainer, the CLI or the HTTP admin routes all land
    in ``models/model_events.jsonl``). Re-read only when the file changes."""

    def __init__(self, models_dir: Path) -> None:
        self.path = models_dir / FILENAME
        self.models_dir = models_dir
        self._seen: tuple[int, int] | None = None
        self._summary: dict[str, tuple[int, int]] = {}  # kind -> (count, newest time_ms)

    def summary(self) -> dict[str, tuple[int, int]]:
        """``kind -> (decisions, newest time_ms)`` for the kinds that occurred."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (stat.st_size, stat.st_mtime_ns)
        if key != self._seen:
            try:
                rows = ModelEvents(self.models_dir).rows()
            except ValueError as exc:  # a torn last line: keep the last good reading
                log.warning("model history %s unreadable: %s", self.path, exc)
                return self._summary
            summary: dict[str, tuple[int, int]] = {}
            for row in rows:
                count, newest = summary.get(row.get("kind"), (0, 0))
                summary[row.get("kind")] = (count + 1, max(newest, int(row.get("time_ms", 0))))
            self._summary, self._seen = summary, key
        return self._summary


def _warm_parquet() -> None:
    """Write one tiny parquet file to memory: pyarrow imports pandas on its first write
    (~0.3 s), which belongs to start-up, not to the first snapshot."""
    import io

    pq.write_table(pa.table({"x": [1]}), io.BytesIO())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_monitor_metrics(monitor: Monitor) -> str:
    """Prometheus text: the latest snapshot's values and the service's counters.

    Every value is ``featflow_monitor_<metric>`` with labels ``model_version`` (and
    ``feature`` for per-feature metrics); no record ids in labels.
    """
    lines: list[str] = []
    by_metric: dict[str, list[MetricRow]] = {}
    for row in monitor.latest:
        by_metric.setdefault(row.metric, []).append(row)
    for metric, rows in sorted(by_metric.items()):
        name = f"featflow_monitor_{metric}"
        lines.append(f"# TYPE {name} gauge")
        for r in rows:
            labels = f'model_version="{_escape(r.model_version)}"'
            if r.feature is not None:
                labels += f',feature="{_escape(r.feature)}"'
            lines.append(f"{name}{{{labels}}} {r.value!r}")
    lines.append("# TYPE featflow_monitor_records_total counter")
    for topic, n in sorted(monitor.consumed.items()):
        lines.append(f'featflow_monitor_records_total{{topic="{_escape(topic)}"}} {n}')
    lines.append("# TYPE featflow_dead_letters_total counter")
    for (topic, reason), n in sorted(monitor.dead_letters.items()):
        lines.append(
            f'featflow_dead_letters_total{{topic="{_escape(topic)}",reason="{reason}"}} {n}'
        )
    lines.append("# TYPE featflow_monitor_snapshots_total counter")
    lines.append(f"featflow_monitor_snapshots_total {monitor.snapshots}")
    lines.append("# TYPE featflow_retrain_requests_total counter")
    lines.append(f"featflow_retrain_requests_total {monitor.requests}")
    # every kind from the start, so the first promotion is an increase from 0
    history = monitor.history.summary()
    lines.append(
        "# HELP featflow_model_events_total Decisions in the model history, by kind "
        "(promoted, rolled_back, rejected, ...)."
    )
    lines.append("# TYPE featflow_model_events_total counter")
    for kind in KINDS:
        lines.append(f'featflow_model_events_total{{kind="{kind}"}} {history.get(kind, (0, 0))[0]}')
    lines.append(
        "# HELP featflow_model_last_event_timestamp_seconds When the newest decision of each "
        "kind was made."
    )
    lines.append("# TYPE featflow_model_last_event_timestamp_seconds gauge")
    for kind in KINDS:
        if kind in history:
            seconds = history[kind][1] / 1000
            lines.append(f'featflow_model_last_event_timestamp_seconds{{kind="{kind}"}} {seconds}')
    return "\n".join(lines) + "\n"
