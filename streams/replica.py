"""The serving side's copy of the window state: request-time features, nothing written.

``featflow serve`` follows the ``events`` topic with the worker's own decoder, rules and
kernels (:class:`streams.processor.PartitionProcessor`), each partition starting from the
worker's latest checkpoint (the state and the offset it reflects) when there is one, else
from the topic's start. After the same records it holds, per user, exactly the worker's
state. A transaction is then scored with :meth:`features.state.WindowState.peek`: the
features the worker will compute for that event if it is the user's next one, every window
exact at the transaction's time (rows that expired since the user's last event are out),
and nothing is written to any store.

How current the answer is depends on how far the replica has read: :meth:`lag` says how many
records of the topic it has not applied yet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from features.spec import NO_EXPIRY, Expiry, FeatureSpec
from features.state import WindowState
from infra.config import KafkaConfig
from infra.events import EventRules
from infra.partitioner import partition_of
from streams.checkpoint import Checkpoints
from streams.processor import PartitionProcessor

log = logging.getLogger(__name__)


class FeatureReplica:
    """Every partition's window state, kept current from the events topic by a thread."""

    def __init__(
        self,
        *,
        kafka: KafkaConfig,
        topic: str,
        specs: Sequence[FeatureSpec],
        lateness_ms: int,
        expiry: Expiry = NO_EXPIRY,
        rules: EventRules = EventRules(),
        checkpoints: Checkpoints | None = None,
    ) -> None:
        self._kafka, self._topic = kafka, topic
        self._specs = tuple(specs)
        self._lateness_ms, self._expiry = lateness_ms, expiry
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lag = -1  # unknown until the first poll
        self._failed: str | None = None  # why the thread stopped, if it did
        # users of a partition it does not follow (none, unless the topic grew since start)
        self._empty = WindowState(self._specs, lateness_ms=lateness_ms, expiry=expiry)
        self._rules, self._checkpoints = rules, checkpoints
        self._procs: list[PartitionProcessor] = []  # one per partition, from start()

    def _restored(
        self, partition: int, rules: EventRules, checkpoints: Checkpoints | None
    ) -> PartitionProcessor:
        ckpt = checkpoints.load(self._topic, partition) if checkpoints is not None else None
        state = None
        offset = -1
        if ckpt is not None:
            state = WindowState.restore_chain(
                ckpt.state, ckpt.changes, self._specs, lateness_ms=self._lateness_ms,
                expiry=self._expiry,
            )  # fmt: skip
            offset = ckpt.offset
        return PartitionProcessor(
            topic=self._topic, partition=partition, specs=self._specs,
            lateness_ms=self._lateness_ms, expiry=self._expiry, rules=rules, state=state,
            offset=offset,
        )  # fmt: skip

    def start(self) -> FeatureReplica:
        """Follow the topic from each partition's restored offset, in a daemon thread.

        The partitions are the topic's own (asked of the broker), not a configured count:
        a topic a producer auto-created may have another number (found by a kafka-python
        producer: 4 partitions where the settings said 8, and the replica stopped).
        Partitions added later are not followed until a restart.
        """
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            **self._kafka.python_args(),
            enable_auto_commit=False,
            request_timeout_ms=int(max(self._kafka.connect_timeout_s, 1.0) * 6000),
            max_partition_fetch_bytes=4 << 20,
        )
        parts = consumer.partitions_for_topic(self._topic)
        if not parts:
            consumer.close()
            raise RuntimeError(f"topic {self._topic!r} does not exist (or has no partitions)")
        self._procs = [self._restored(p, self._rules, self._checkpoints) for p in sorted(parts)]
        tps = [TopicPartition(self._topic, p.partition) for p in self._procs]
        consumer.assign(tps)
        for tp, proc in zip(tps, self._procs, strict=True):
            consumer.seek(tp, proc.offset + 1)
        self._thread = threading.Thread(
            target=self._follow, args=(consumer, tps), name="feature-replica", daemon=True
        )
        self._thread.start()
        return self

    def _follow(self, consumer: Any, tps: list[Any]) -> None:
        by_partition = {p.partition: p for p in self._procs}
        try:
            while not self._stop.is_set():
                fetched = consumer.poll(timeout_ms=200, max_records=20_000)
                for tp, records in fetched.items():
                    with self._lock:
                        by_partition[tp.partition].process(records)
                # the high watermarks of the last fetches (no broker round trip per poll);
                # the broker is asked only for partitions not fetched from yet
                ends = {tp: consumer.highwater(tp) for tp in tps}
                unknown = [tp for tp, end in ends.items() if end is None]
                if unknown:
                    ends.update(consumer.end_offsets(unknown))
                self._lag = sum(
                    max(0, ends[tp] - 1 - p.offset) for tp, p in zip(tps, self._procs, strict=True)
                )
        except Exception as exc:  # the service goes on; transactions get a 503 saying why
            log.exception("feature replica stopped")
            self._failed = f"{type(exc).__name__}: {exc}"
            self._lag = -1
        finally:
            consumer.close()

    def close(self) -> None:
        """Stop following the topic."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def lag(self) -> int:
        """Records of the topic not applied yet (-1: unknown, or the replica stopped)."""
        return self._lag

    def peek(
        self,
        user_ids: np.ndarray,
        merchants: np.ndarray,
        amounts: np.ndarray,
        times_ms: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features, late, known) of each transaction as its user's next event; nothing is
        written. ``known``: the replica holds history of that user. Raises RuntimeError
        once the replica has stopped following the topic (its answers would go stale)."""
        if self._failed is not None:
            raise RuntimeError(f"the feature replica stopped: {self._failed}")
        n = len(user_ids)
        features = np.full((n, len(self._specs)), np.nan)
        late = np.zeros(n, dtype=bool)
        known = np.zeros(n, dtype=bool)
        with self._lock:
            owner = [
                next((p.state for p in self._procs if p.state.holds(int(u))), None)
                for u in user_ids
            ]
            for state in {id(s): s for s in owner if s is not None}.values():
                rows = np.array([i for i, s in enumerate(owner) if s is state], dtype=np.int64)
                features[rows], late[rows] = state.peek(
                    user_ids[rows], times_ms[rows], amounts[rows], merchants[rows]
                )
                known[rows] = True
            # a user none holds is new to the partition its records will land on: that
            # partition's state judges it (its clock, ``features.spec.Expiry``)
            rows = np.array([i for i, s in enumerate(owner) if s is None], dtype=np.int64)
            if len(rows):
                by_partition = {p.partition: p.state for p in self._procs}
                home = partition_of(user_ids[rows], max(by_partition) + 1)
                for partition in np.unique(home).tolist():
                    mine = rows[home == partition]
                    state = by_partition.get(partition, self._empty)
                    features[mine], late[mine] = state.peek(
                        user_ids[mine], times_ms[mine], amounts[mine], merchants[mine]
                    )
        return features, late, known
