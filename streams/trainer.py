"""The trainer service: retraining requests in; challengers, verdicts and promotions out
(``featflow trainer``).

One process reads the ``retrain`` topic (assigned, like the monitor: a trainer is one per
registry) and takes each request to its decision with :class:`~inference.retraining.
Retrainer`; bad records go to ``retrain.dlq`` with their reason. While a challenger runs in
shadow it reads the monitor's rows on topic ``monitoring`` and decides from the live
paired comparison (``shadow_auc_gain`` and its standard error over at least
``shadow_min_labels`` paired events) with the same rule as the offline gate
(:func:`inference.gate.decide`). Requests that arrive meanwhile wait on the topic.

Every decision the history gains is also published on topic ``model.events`` (JSON, the
row as written, hashes included). The topic copy is caught up from the history, not sent
beside it: on start and after every step, the rows after the last one on the topic are
sent, so a kill between the two writes loses nothing and sends nothing twice. After each
request is decided its offset is saved (one atomic checkpoint); a request decided but not
yet saved is skipped on restart, because the history already holds its decision, and a
refused request read again finds its dead letter already in the DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from inference.exceptions import RegistryDamaged
from inference.gate import GateVerdict, decide
from inference.retraining import Request, Retrainer
from infra.dead_letter_log import LettersSent, already_sent, dlq_end
from infra.retrain import RetrainRequest, decode_requests
from infra.topics import ensure_topics
from monitoring.shadow import SHADOW_METRICS
from monitoring.snapshot import MetricRow
from streams.checkpoint import Checkpoint
from streams.checkpoint_stores import open_checkpoints
from streams.config import TrainerConfig

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "trainer"
REGISTRY_RETRY_S = 5.0  # how often a request tries a damaged registry again
_rows = msgspec.json.Decoder(MetricRow)


class Trainer:
    """The trainer service around a :class:`Retrainer`."""

    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.retrainer = Retrainer(config.stores, config.retrain)
        self.checkpoints = open_checkpoints(config.stores, config.kafka, config.topics)
        self.offset = -1  # last retrain offset decided
        self.dead_letters = 0
        self.letters_sent = LettersSent()  # refused requests a replay meets again
        self.decided = 0
        self.registry_errors = 0  # tries refused by a registry damaged by hand
        self.ignored_rows = 0  # monitoring records that are not rows (not ours to judge)
        # the latest shadow rows: (shadow version, champion version) -> metric -> row
        self.shadow_rows: dict[tuple[str, str], dict[str, MetricRow]] = {}
        self.started = asyncio.Event()
        self._stop = asyncio.Event()
        self._published = 0  # history rows known to be on topic model.events
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to return after the step under way."""
        self._stop.set()

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Consume requests until :meth:`stop`."""
        cfg = self.config
        await asyncio.to_thread(ensure_topics, cfg.kafka, cfg.topics)
        self._consumer = AIOKafkaConsumer(
            **cfg.kafka.aio_args(), enable_auto_commit=False, group_id=None
        )
        self._producer = AIOKafkaProducer(**cfg.kafka.aio_args(), linger_ms=5)
        await self._consumer.start()
        await self._producer.start()
        try:
            retrain = TopicPartition(cfg.topics.retrain, 0)
            monitoring = TopicPartition(cfg.topics.monitoring, 0)
            self._consumer.assign([retrain, monitoring])
            saved = await asyncio.to_thread(self.checkpoints.load, CHECKPOINT_NAME, 0)
            self.offset = saved.offset if saved is not None else -1
            sent = await asyncio.to_thread(
                already_sent,
                cfg.kafka,
                cfg.topics.retrain_dlq,
                0 if saved is None else saved.dlq_from,
                cfg.topics.retrain,
                {0: self.offset},
            )
            self.letters_sent.add(cfg.topics.retrain, sent)
            self._consumer.seek(retrain, self.offset + 1)
            await self._consumer.seek_to_end(monitoring)  # live verdicts, not old ones
            self._published = await self._on_topic()
            await self._catch_up_topic()
            self.started.set()
            while not self._stop.is_set():
                fetched = await self._consumer.getmany(timeout_ms=200, max_records=100)
                self._take_rows(fetched.get(monitoring, []))
                messages = fetched.get(retrain, [])
                if not messages:
                    continue
                # one request at a time: stop reading requests while deciding this one
                self._consumer.pause(retrain)
                try:
                    await self._requests(messages)
                finally:
                    self._consumer.seek(retrain, self.offset + 1)
                    self._consumer.resume(retrain)
        finally:
            await self._consumer.stop()
            await self._producer.stop()

    async def _requests(self, messages: list) -> None:
        good, dead = decode_requests(
            [m.value for m in messages],
            partitions=[0] * len(messages),
            offsets=[m.offset for m in messages],
            topic=self.config.topics.retrain,
            rules=self.config.rules,
            keys=[m.key for m in messages],
        )
        refused = {d.offset: d for d in dead}
        requests = iter(good)
        for message in messages:
            if self._stop.is_set():
                return
            letter = refused.get(message.offset)
            if letter is not None:
                for fresh in self.letters_sent.fresh([letter]):  # none if a replay's
                    assert self._producer is not None
                    await self._producer.send_and_wait(
                        self.config.topics.retrain_dlq,
                        value=fresh.record_value,
                        key=fresh.key,
                        headers=fresh.headers(),
                    )
                    self.dead_letters += 1
            else:
                decided = await self._decide(_request(next(requests)))
                if not decided:  # stopped while a shadow trial waits: resume it on restart
                    return
            self.offset = message.offset
            assert self._consumer is not None
            dlq_from = await dlq_end(self._consumer, self.config.topics.retrain_dlq)
            checkpoint = Checkpoint(self.offset, b"", dlq_from)
            await asyncio.to_thread(self.checkpoints.save, CHECKPOINT_NAME, 0, checkpoint)

    async def _decide(self, request: Request) -> bool:
        """Take one request to its decision; False if stopped before one. While the registry
        is damaged by hand the request waits (logged every time it is tried): each step is
        resumed from the history, so trying again repeats nothing already done."""
        while True:
            try:
                return await self._decide_once(request)
            except RegistryDamaged as exc:
                self.registry_errors += 1
                log.error("request %s waits for the model registry to be repaired: %s",
                          request.request_id, exc)  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), REGISTRY_RETRY_S)
                if self._stop.is_set():
                    return False

    async def _decide_once(self, request: Request) -> bool:
        await asyncio.to_thread(self.retrainer.acknowledge, request)
        await self._catch_up_topic()
        if not await self._labels_for(request):
            return False
        outcome = await asyncio.to_thread(self.retrainer.handle, request)
        await self._catch_up_topic()
        assert self._consumer is not None
        monitoring = TopicPartition(self.config.topics.monitoring, 0)
        while outcome.kind == "shadow_started":
            if self._stop.is_set():
                return False
            verdict = self._verdict(outcome.version)
            concluded = await asyncio.to_thread(self.retrainer.conclude, request, verdict)
            if concluded is not None:
                outcome = concluded
                await self._catch_up_topic()
                break
            fetched = await self._consumer.getmany(monitoring, timeout_ms=500)
            self._take_rows(fetched.get(monitoring, []))
        self.decided += 1
        log.warning("request %s: %s %s", request.request_id, outcome.kind, outcome.version)
        return True

    async def _labels_for(self, request: Request) -> bool:
        """Wait (at most ``label_wait_s``) until ``min_new_labels`` events after the firing
        are labelled; False if stopped meanwhile."""
        r = self.retrainer
        if not await asyncio.to_thread(r.needs_labels, request):
            return True
        assert request.event_time_ms is not None
        want, deadline = r.settings.min_new_labels, time.monotonic() + r.settings.label_wait_s
        while not self._stop.is_set():
            have = await asyncio.to_thread(r.new_labels, request.event_time_ms)
            if have >= want:
                return True
            if time.monotonic() > deadline:
                log.warning("request %s: %d of %d new labels; training on what there is",
                            request.request_id, have, want)  # fmt: skip
                return True
            await asyncio.sleep(1.0)
        return False

    # ------------------------------------------------------------------ shadow verdict

    def _take_rows(self, messages: list) -> None:
        for m in messages:
            try:
                row = _rows.decode(m.value)
            except (msgspec.DecodeError, TypeError):
                self.ignored_rows += 1
                continue
            if row.metric in SHADOW_METRICS and row.feature is not None:
                self.shadow_rows.setdefault((row.model_version, row.feature), {})[row.metric] = row

    def _verdict(self, shadow: str | None) -> GateVerdict | None:
        """The live verdict on ``shadow`` against the current champion, once the monitor
        has compared them on enough paired events."""
        champion = self.retrainer.registry.champion_version()
        rows = self.shadow_rows.get((shadow or "", champion or ""), {})
        if len(rows) < len(SHADOW_METRICS):
            return None
        samples = rows["shadow_auc_gain"].samples
        if samples < self.config.retrain.shadow_min_labels:
            return None
        s = self.config.retrain
        return decide(
            rows["shadow_champion_auc"].value,
            rows["shadow_auc"].value,
            rows["shadow_auc_gain_se"].value,
            samples,
            margin=s.margin,
            alpha=s.alpha,
            where=" scored live side by side",
        )

    # ------------------------------------------------------------------ model.events

    async def _on_topic(self) -> int:
        """How many history rows topic ``model.events`` holds: the index after its last
        record's row (0 when empty or when that row is not in the history)."""
        tp = TopicPartition(self.config.topics.model_events, 0)
        reader = AIOKafkaConsumer(
            **self.config.kafka.aio_args(), enable_auto_commit=False, group_id=None
        )
        await reader.start()
        try:
            reader.assign([tp])
            end = (await reader.end_offsets([tp]))[tp]
            if end == 0:
                return 0
            reader.seek(tp, end - 1)
            last = await asyncio.wait_for(reader.getone(tp), timeout=10)
        finally:
            await reader.stop()
        try:
            sha = json.loads(last.value)["sha256"]
        except (ValueError, KeyError, TypeError):
            return 0
        shas = [r["sha256"] for r in self.retrainer.history.rows()]
        return shas.index(sha) + 1 if sha in shas else 0

    async def _catch_up_topic(self) -> None:
        assert self._producer is not None
        rows = self.retrainer.history.rows()
        for row in rows[self._published :]:
            value = json.dumps(row, sort_keys=True).encode()
            await self._producer.send_and_wait(self.config.topics.model_events, value=value)
        self._published = len(rows)


def _request(r: RetrainRequest) -> Request:
    return Request(r.request_id, r.model_version, r.reason, dict(r.values), r.event_time_ms)
