"""Workers on separate machines (no shared disk): a partition's state follows it through
Kafka (``FEATFLOW_CHECKPOINT_STORE=kafka``), by rebalance and by SIGKILL, and the features
end exactly as the oracle's."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import pytest

from featflow.processes import start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from infra.producer import publish
from infra.topics import ensure_topics
from tests.streams.pipeline_helpers import assert_clean_log, check_stores, make_events, oracle
from tests.streams.test_kill_storm import _committed, _wait_working


def _acquired(log: Path, topic: str) -> dict[int, list[int]]:
    """Partition -> the offsets a worker restored it at, in order (-1: from no checkpoint)."""
    out: dict[int, list[int]] = {}
    pattern = rf"acquired {re.escape(topic)}-(\d+) at offset (-?\d+)"
    for partition, offset in re.findall(pattern, log.read_text()):
        out.setdefault(int(partition), []).append(int(offset))
    return out


def _wait_committed(settings: Settings, n: int, workers: list) -> None:
    deadline = time.monotonic() + 180
    while _committed(settings) < n:
        assert all(w.poll() is None for w in workers), "a worker died"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_partitions_move_between_machines_with_their_state(
    settings: Settings, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Machine A starts alone; B joins (a rebalance hands it partitions A checkpointed); A is
    SIGKILLed (B takes A's partitions, from A's last checkpoints); C joins with an empty
    disk. Every worker shares only the broker and Redis with the others."""
    monkeypatch.setenv("FEATFLOW_LOGLEVEL", "info")  # acquired/released lines
    shared = settings.model_copy(update={"online_store": redis_url, "checkpoint_store": "kafka"})
    homes = {name: tmp_path / f"machine-{name}" for name in "abc"}
    logs = {name: tmp_path / f"{name}.log" for name in "abc"}

    def start(name: str):
        return start_worker(shared.model_copy(update={"home": homes[name]}), logs[name])

    events = make_events(40_000, users=2_000, seed=23, zipf=1.6)
    expected = oracle(events)
    ensure_topics(shared.kafka, shared.topics)
    producer = threading.Thread(
        target=publish, args=(shared.kafka, shared.topics.events, list(events.records())),
        kwargs={"rate": 1_500},
    )  # fmt: skip
    producer.start()
    workers = {"a": start("a")}
    try:
        _wait_working(shared, workers["a"], logs["a"])
        _wait_committed(shared, 8_000, list(workers.values()))
        workers["b"] = start("b")
        _wait_working(shared, workers["b"], logs["b"])
        _wait_committed(shared, 20_000, list(workers.values()))
        workers["a"].send_signal(signal.SIGKILL)
        workers["a"].wait()
        killed = workers.pop("a")
        assert killed.returncode == -signal.SIGKILL
        _wait_committed(shared, 28_000, list(workers.values()))
        workers["c"] = start("c")
        _wait_working(shared, workers["c"], logs["c"])
        producer.join()
        wait_caught_up(shared, list(workers.values()), timeout=240)
    finally:
        producer.join()
        for worker in workers.values():
            stop_process(worker)
    topic = shared.topics.events
    took = {name: _acquired(logs[name], topic) for name in "abc"}
    # B and C restored partitions from checkpoints they never wrote: nothing on their disks
    # but what the topic gave them
    assert any(o >= 0 for offsets in took["b"].values() for o in offsets), took
    assert any(o >= 0 for offsets in took["c"].values() for o in offsets), took
    for name in "abc":
        assert not list((homes[name] / "checkpoints").glob("*")), name
        assert_clean_log(logs[name])
    reader = shared.model_copy(update={"home": homes["c"]})  # any machine's Feast repo
    check_stores(reader, expected, homes=list(homes.values()))
