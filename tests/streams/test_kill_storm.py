"""200,000 heavy-tailed events through seven SIGKILLs of the worker: five at random moments,
one aimed at a checkpoint write, one in the middle of a rebalance. After the last restart
every user's online row equals an uninterrupted run's (the backfill of the same events,
itself equal to the pandas oracle in the backfill tests), the offline rows de-duplicate to
exactly one per event with the same features, and no event is lost."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from featflow.processes import start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from features.backfill import backfill
from features.event_files import from_records
from features.spec import FEATURE_NAMES
from infra.producer import publish
from infra.topics import ensure_topics
from tests.streams.pipeline_helpers import Expected, check_stores, make_events
from tests.streams.test_faults import _owned
from tests.streams.test_kill_restart import _wait_committed

EVENTS = 200_000
LIVE = 150_000  # published live while the kills happen; the rest after the last kill
RATE = 1_500  # events/s: the live part lasts ~100 s, as long as the kills and restarts
RANDOM_KILLS = 5


def _kill(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.wait()


def _acquired_at(log: Path, topic: str) -> list[int]:
    """The offsets a worker's life restored its partitions of ``topic`` at (-1: from none)."""
    return [int(o) for o in re.findall(rf"acquired {re.escape(topic)}-\d+ at offset (-?\d+)",
                                         log.read_text())]  # fmt: skip


def _wait_working(settings: Settings, worker: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``worker`` owns partitions (start-up and the group join take seconds: a kill
    before then would only test start-up)."""
    deadline = time.monotonic() + 120
    while not _owned(log, settings.topics.events):
        assert time.monotonic() < deadline and worker.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)


def _committed(settings: Settings) -> int:
    """Events the group has committed (so checkpointed) in all."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=settings.consumer_group,
        enable_auto_commit=False,
    )  # fmt: skip
    try:
        topic = settings.topics.events
        parts = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        return sum(consumer.committed(tp) or 0 for tp in parts)
    finally:
        consumer.close()


def _temporaries(folder: Path) -> list[Path]:
    return list(folder.glob(".*.tmp"))


def _kill_inside_a_checkpoint_write(worker: subprocess.Popen[bytes], folder: Path) -> bool:
    """SIGKILL ``worker`` as soon as a checkpoint's temporary file appears; True if the kill
    landed before the rename (the temporary file is still there)."""
    before = set(_temporaries(folder))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker.poll() is None:
        if set(_temporaries(folder)) - before:
            _kill(worker)
            return bool(set(_temporaries(folder)) - before)
        time.sleep(0.0005)
    raise AssertionError("no checkpoint written within 60 s")


def _kill_inside_a_rebalance(
    settings: Settings, worker: subprocess.Popen[bytes], log: Path, tmp_path: Path
) -> subprocess.Popen[bytes]:
    """Start a second member; SIGKILL ``worker`` at its first partition released to it
    (the others not yet checkpointed and handed over). Returns the second member."""
    released = log.read_text().count("released ")
    joiner = start_worker(settings, tmp_path / "joiner.log")
    deadline = time.monotonic() + 120
    while log.read_text().count("released ") == released:
        assert time.monotonic() < deadline, "no rebalance within 120 s"
        assert worker.poll() is None and joiner.poll() is None
        time.sleep(0.001)
    _kill(worker)
    return joiner


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_seven_kills_in_200k_heavy_tailed_events(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATFLOW_LOGLEVEL", "info")  # acquired/released lines
    events = make_events(EVENTS, users=5_000, seed=41, zipf=1.6)
    records = list(events.records())
    busiest = np.bincount(events.user_id).max() / EVENTS
    assert busiest > 0.3  # one user holds a large share: its state is the big one
    uninterrupted = backfill(from_records([v for _, v in records]), lateness_ms=60_000)
    assert uninterrupted.rejected == [] and uninterrupted.duplicates == 0
    rows = uninterrupted.table.to_pandas().set_index("event_id").loc[events.event_id]
    expected = Expected(events, rows[list(FEATURE_NAMES)].to_numpy(float))

    ensure_topics(settings.kafka, settings.topics)
    topic = settings.topics.events
    producer = threading.Thread(
        target=publish, args=(settings.kafka, topic, records[:LIVE]), kwargs={"rate": RATE}
    )
    rng = random.Random(41)
    checkpoints = settings.stores.checkpoint_dir
    logs = [tmp_path / "worker-0.log"]
    worker = start_worker(settings, logs[-1])
    producer.start()
    joiner = None

    def restart() -> subprocess.Popen[bytes]:
        logs.append(tmp_path / f"worker-{len(logs)}.log")
        return start_worker(settings, logs[-1])

    try:
        flowing = 0
        for _ in range(RANDOM_KILLS):
            # a random moment once this life has checkpointed something of its own (in its
            # first seconds a life only repeats start-up, which the next restart tests too)
            _wait_working(settings, worker, logs[-1])
            _wait_committed(settings, worker, _committed(settings) + 1)
            time.sleep(rng.uniform(0.0, 2.0))
            assert worker.poll() is None, logs[-1].read_text()[-3000:]
            flowing += producer.is_alive()
            _kill(worker)
            worker = restart()
        landed = False
        for _ in range(5):  # a kill may miss the write by a hair: try again
            _wait_working(settings, worker, logs[-1])
            landed = _kill_inside_a_checkpoint_write(worker, checkpoints)
            worker = restart()
            if landed:
                break
        assert landed, "no kill landed inside a checkpoint write"
        assert flowing >= 3, "the kills should come while events are published"
        _wait_working(settings, worker, logs[-1])
        joiner = _kill_inside_a_rebalance(settings, worker, logs[-1], tmp_path)
        producer.join()
        publish(settings.kafka, topic, records[LIVE:])  # work for the lives after the kills
        worker = restart()  # the killed member rejoins: one more rebalance
        wait_caught_up(settings, [worker, joiner], timeout=300)
    finally:
        producer.join()
        stop_process(worker)
        if joiner is not None:
            stop_process(joiner)
    check_stores(settings, expected)
    # the kills came after progress: the lives after the first restored checkpoints
    restored = [max(_acquired_at(log, topic), default=-1) for log in logs[1:]]
    assert sum(offset > 0 for offset in restored) >= RANDOM_KILLS, restored
    assert max(_acquired_at(tmp_path / "joiner.log", topic), default=-1) > 0  # took over
    # what the killed writers left behind was swept by the next worker to open the folder
    assert _temporaries(checkpoints) == []
