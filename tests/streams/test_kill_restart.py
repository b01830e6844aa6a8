"""SIGKILL the worker mid-stream, restart it: features end exactly as an uninterrupted run.

Also covers rebalance: a second worker joins the group mid-stream and takes
over partitions together with their checkpointed state.
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from kafka import KafkaConsumer, TopicPartition

from featflow.processes import start_worker, stop_process, wait_caught_up, wait_lag_at_most
from featflow.settings import Settings
from infra.lag import group_lag
from infra.producer import publish
from infra.topics import ensure_topics
from streams.generator import generate_outcomes
from tests.streams.pipeline_helpers import (
    check_stores,
    make_events,
    oracle,
)


def _wait_progress(
    settings: Settings, worker: subprocess.Popen[bytes], total: int, fraction: float
) -> None:
    """Until the group has checkpointed at least ``fraction`` of the events."""
    wait_lag_at_most(settings, [worker], int(total * (1 - fraction)), timeout=120)


def test_sigkill_mid_stream_then_restart(settings: Settings, tmp_path: Path) -> None:
    events = make_events(12_000, users=400, seed=11)
    expected = oracle(events)
    ensure_topics(settings.kafka, settings.topics)
    publish(settings.kafka, settings.topics.events, events.records())

    log = tmp_path / "worker.log"
    for fraction in (0.25, 0.6):  # kill twice, at different points
        worker = start_worker(settings, log)
        try:
            _wait_progress(settings, worker, len(events), fraction)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
    worker = start_worker(settings, log)
    try:
        wait_caught_up(settings, [worker], timeout=180)
    finally:
        stop_process(worker)
    check_stores(settings, expected)


def _dead_letter_sources(settings: Settings, topic: str) -> collections.Counter[tuple[int, int]]:
    """How many letters ``topic`` holds for each (source partition, source offset)."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )  # fmt: skip
    try:
        letters = [dict(m.headers) for m in consumer]
    finally:
        consumer.close()
    return collections.Counter(
        (int(h["featflow.source.partition"]), int(h["featflow.source.offset"])) for h in letters
    )


def _wait_committed(settings: Settings, worker: subprocess.Popen[bytes], n: int) -> None:
    """Until the group has committed (so checkpointed) ``n`` events in all."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    parts = [TopicPartition(settings.topics.events, p) for p in range(settings.topic_partitions)]
    deadline = time.monotonic() + 120
    try:
        while sum(consumer.committed(tp) or 0 for tp in parts) < n:
            assert worker.poll() is None, "the worker died"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
    finally:
        consumer.close()


def test_dead_letters_are_sent_once_whatever_the_kills(settings: Settings, tmp_path: Path) -> None:
    """Three SIGKILLs while events (with 300 retries of a producer) and labels flow: each
    malformed event is in ``events.dlq`` and each malformed label in ``outcomes.dlq``
    exactly once (replays after a checkpoint used to send their letters again: 10 bad
    records, 16 letters); each retried event counts once, online and offline; the good
    events' features are still exact and every label is stored."""
    events = make_events(16_000, users=400, seed=15)
    expected = oracle(events)
    records = _with_retries(list(events.records()), 300)  # a producer's retries: once each
    records = _with_bad(records, 80, b'{"user_id": "not a number %d"')
    labels = _with_bad(
        list(generate_outcomes(events, seed=15).records()), 40, b'{"label": "yes %d"}'
    )
    ensure_topics(settings.kafka, settings.topics)
    # live streams (~20 s), so that each kill finds records processed since a checkpoint
    producers = [
        threading.Thread(target=publish, args=(settings.kafka, topic, rows), kwargs={"rate": r})
        for topic, rows, r in (
            (settings.topics.events, records, 800),
            (settings.topics.outcomes, labels, 800),
        )
    ]
    for producer in producers:
        producer.start()
    log = tmp_path / "worker.log"
    try:
        for fraction in (0.2, 0.45, 0.7):
            worker = start_worker(settings, log)
            try:
                _wait_committed(settings, worker, int(len(records) * fraction))
            finally:
                worker.send_signal(signal.SIGKILL)
                worker.wait()
    finally:
        for producer in producers:
            producer.join()
    worker = start_worker(settings, log)
    try:
        wait_caught_up(settings, [worker], timeout=180)
        deadline = time.monotonic() + 60
        while _labels_stored(settings) < set(events.event_id):
            assert time.monotonic() < deadline, "labels not all stored"
            time.sleep(0.5)
    finally:
        stop_process(worker)
    for topic, n in ((settings.topics.dlq, 80), (settings.topics.outcomes_dlq, 40)):
        letters = _dead_letter_sources(settings, topic)
        assert sum(letters.values()) == n, (topic, letters.most_common(3))
        assert len(letters) == n
    # the restarts did meet events' letters already sent (else this test proves nothing);
    # labels a restart reads again were mostly flushed before the kill and are skipped whole
    met = re.findall(r"dead letters of the replay already in (\S+):", log.read_text())
    assert settings.topics.dlq in met
    check_stores(settings, expected)


def _with_retries(records: list, n: int) -> list:
    """``records`` with ``n`` of them sent again a few records later (same key and value)."""
    rng = np.random.default_rng(7)
    records = list(records)
    for i in sorted(rng.choice(len(records) - 10, n, replace=False).tolist(), reverse=True):
        records.insert(i + int(rng.integers(1, 10)), records[i])
    return records


def _with_bad(records: list, n: int, template: bytes) -> list:
    """``records`` with ``n`` malformed ones spread over them (and, by the keys they borrow
    from their neighbours, over the partitions)."""
    records = list(records)
    for i in range(n):
        at = (i + 1) * len(records) // (n + 1) + i
        records.insert(at, (records[at][0], template % i))
    return records


def _labels_stored(settings: Settings) -> set[str]:
    if not any(settings.stores.outcomes_dir.glob("*.parquet")):
        return set()
    return set(pd.read_parquet(settings.stores.outcomes_dir, columns=["event_id"])["event_id"])


def test_checkpoint_whose_commit_was_lost_is_committed_on_restart(
    settings: Settings, tmp_path: Path
) -> None:
    """A SIGKILL between a checkpoint file and its offset commit leaves the group's committed
    offset behind the checkpoint. With nothing new to read on that partition, the restarted
    worker never checkpointed it again, so the group stayed behind (and `wait_caught_up`
    timed out) although every event was in the stores."""
    events = make_events(2_000, users=50, seed=14)
    expected = oracle(events)
    ensure_topics(settings.kafka, settings.topics)
    publish(settings.kafka, settings.topics.events, events.records())
    worker = start_worker(settings, tmp_path / "w1.log")
    try:
        wait_caught_up(settings, [worker], timeout=120)
    finally:
        stop_process(worker)
    # The lost commits: a group with no committed offset at all, over the same checkpoints.
    settings = settings.model_copy(update={"consumer_group": f"{settings.consumer_group}-b"})
    assert group_lag(settings.kafka, settings.consumer_group, settings.topics.events) == len(events)
    worker = start_worker(settings, tmp_path / "w2.log")
    try:
        wait_caught_up(settings, [worker], timeout=60)
    finally:
        stop_process(worker)
    check_stores(settings, expected)


def test_second_worker_takes_partitions_with_their_state(
    settings: Settings, tmp_path: Path
) -> None:
    events = make_events(12_000, users=400, seed=12)
    expected = oracle(events)
    ensure_topics(settings.kafka, settings.topics)
    half = len(events) // 2
    records = list(events.records())
    publish(settings.kafka, settings.topics.events, records[:half])
    first = start_worker(settings, tmp_path / "w1.log")
    second = None
    try:
        _wait_progress(settings, first, half, 0.5)
        second = start_worker(settings, tmp_path / "w2.log")
        publish(settings.kafka, settings.topics.events, records[half:])
        wait_caught_up(settings, [first, second], timeout=180)
    finally:
        stop_process(first)
        if second is not None:
            stop_process(second)
    check_stores(settings, expected)


def test_checkpoint_ahead_of_the_log_stops_the_worker(settings: Settings, tmp_path: Path) -> None:
    """A recreated topic must not be silently skipped up to an old checkpoint."""
    from features.state import WindowState
    from streams.checkpoint import Checkpoint, CheckpointStore

    ensure_topics(settings.kafka, settings.topics)
    events = make_events(200, users=10, seed=13)
    publish(settings.kafka, settings.topics.events, events.records())
    store = CheckpointStore(settings.stores.checkpoint_dir)
    state = WindowState(lateness_ms=int(settings.allowed_lateness_s * 1000)).snapshot()
    for partition in range(settings.topic_partitions):
        store.save(settings.events_topic, partition, Checkpoint(offset=10**6, state=state))
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        code = worker.wait(timeout=120)
    finally:
        stop_process(worker)
    assert code != 0
    assert "the topic was recreated" in log.read_text()
