"""Faults around the worker: a group member SIGKILLed while another runs, and the broker not
answering for 30 s mid-stream. Each ends with the features equal to the oracle for every
user and exactly one offline row per event."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

from featflow.processes import start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from infra.broker import embedded_broker
from infra.producer import publish
from infra.topics import ensure_topics
from tests.streams.pipeline_helpers import check_stores, make_events, oracle


def _owned(log: Path, topic: str) -> set[int]:
    """The partitions of ``topic`` a worker owns now, from its acquired/released lines."""
    owned: set[int] = set()
    for verb, partition in re.findall(
        rf"(acquired|released) {re.escape(topic)}-(\d+) ", log.read_text()
    ):
        (owned.add if verb == "acquired" else owned.discard)(int(partition))
    return owned


def test_a_killed_member_s_partitions_move_to_the_survivor(
    settings: Settings, tmp_path: Path, monkeypatch
) -> None:
    """Two workers share the group; one is SIGKILLed mid-stream. The survivor takes its
    partitions, with their checkpointed state, within the session timeout (plus the
    rebalance), and the features stay exact."""
    monkeypatch.setenv("FEATFLOW_LOGLEVEL", "info")  # the "acquired" lines
    events = make_events(12_000, users=400, seed=31)
    expected = oracle(events)
    records = list(events.records())
    ensure_topics(settings.kafka, settings.topics)
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [start_worker(settings, logs[0]), start_worker(settings, logs[1])]
    producer = threading.Thread(
        target=publish, args=(settings.kafka, settings.topics.events, records), kwargs={"rate": 800}
    )
    try:
        deadline = time.monotonic() + 120
        topic = settings.topics.events
        while not (_owned(logs[0], topic) and _owned(logs[1], topic)):  # both own some
            assert time.monotonic() < deadline, "the two workers never split the partitions"
            assert all(w.poll() is None for w in workers)
            time.sleep(0.2)
        producer.start()
        time.sleep(5.0)
        survivor_before = _owned(logs[1], topic)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        killed_at = time.monotonic()
        everything = set(range(settings.topic_partitions))
        while _owned(logs[1], topic) != everything:
            took = time.monotonic() - killed_at
            assert took < settings.group_session_timeout_s * 3 + 10, (took, _owned(logs[1], topic))
            assert workers[1].poll() is None, logs[1].read_text()[-3000:]
            time.sleep(0.2)
        assert survivor_before != everything  # it did take partitions over
        producer.join()
        wait_caught_up(settings, [workers[1]], timeout=180)
    finally:
        for worker in workers:
            stop_process(worker)
    check_stores(settings, expected)


def test_broker_silent_for_30_s_mid_stream(settings: Settings, tmp_path: Path) -> None:
    """The broker stops answering (SIGSTOP: connections hang) for 30 s while events flow:
    the worker does not crash, retries, and catches up with nothing lost or doubled."""
    broker = embedded_broker(log_path=tmp_path / "tansu.log").start()
    try:
        settings = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{broker.port}"})
        events = make_events(10_000, users=300, seed=32)
        expected = oracle(events)
        records = list(events.records())
        ensure_topics(settings.kafka, settings.topics)
        log = tmp_path / "worker.log"
        worker = start_worker(settings, log)
        try:
            publish(settings.kafka, settings.topics.events, records[:2000])
            deadline = time.monotonic() + 120
            while not any(settings.stores.offline_dir.glob("*.parquet")):
                assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
                time.sleep(0.2)
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                time.sleep(30.0)
                assert worker.poll() is None, log.read_text()[-3000:]
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            publish(settings.kafka, settings.topics.events, records[2000:])
            wait_caught_up(settings, [worker], timeout=240)
            assert worker.poll() is None
        finally:
            stop_process(worker)
        check_stores(settings, expected)
    finally:
        broker.stop()
