"""The fetch loop against a rebalance (``streams.partitioned``): a partition given up while a
thread processes its records is checkpointed only once that processing is done.

A unit test of the ordering, with a stand-in consumer and processor: under load (a publisher
at 160k events/s) the merchant worker lost its partitions while a thread was updating their
states, and the release copied a state mid-update; the process died in malloc."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from featflow.settings import Settings
from streams.partitioned import PartitionedWorker


class _Slow:
    """A processor whose ``process`` runs until the test lets it finish."""

    topic = "rows"
    partition = 0
    offset = 0

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()
        self.done = False

    def process(self, records: list[object]) -> list[object]:
        self.entered.set()
        assert self.go.wait(10)
        self.offset += len(records)
        self.done = True
        return records


class _Consumer:
    """One fetch of one record, then nothing."""

    def __init__(self) -> None:
        self.fetches = 0

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[object]]:
        self.fetches += 1
        if self.fetches == 1:
            return {TopicPartition("rows", 0): ["record"]}
        await asyncio.sleep(0.01)
        return {}


class _Worker(PartitionedWorker[Any, Any]):
    process_in_thread = True

    def new_processor(self, partition: int, checkpoint: object) -> Any:
        raise AssertionError("not acquired here")

    def merge(self, parts: list[Any]) -> Any:
        return parts

    async def apply(self, effects: Any) -> None:
        self.applied.append(effects)


def test_a_release_waits_for_the_partition_being_processed(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[bool], list[object]]:
        worker = _Worker(Settings(home=tmp_path).worker, topic="rows", dlq="rows.dlq", group="g")
        worker.applied = []  # type: ignore[attr-defined]
        worker._consumer = _Consumer()  # type: ignore[assignment]
        processor = _Slow()
        worker.processors[0] = processor
        worker.checkpointer.track(0, -1)
        saved: list[bool] = []  # whether the processing was done when its state was saved
        worker.checkpointer.save_now = lambda p, _: saved.append(p.done)  # type: ignore[method-assign]

        async def dlq_end(dlq: str | None = None) -> int:
            return 0

        worker.dlq_end = dlq_end  # type: ignore[method-assign]
        run = asyncio.create_task(worker.run())
        while not processor.entered.is_set():
            await asyncio.sleep(0.005)
        release = asyncio.create_task(worker.release([TopicPartition("rows", 0)]))
        await asyncio.sleep(0.3)
        early = list(saved)  # nothing may be saved while the thread still processes
        processor.go.set()
        await release
        worker._stopping.set()
        await run
        return early + saved, worker.applied  # type: ignore[attr-defined]

    saved, applied = asyncio.run(scenario())
    assert saved == [True]  # saved once, after the processing ...
    assert applied == [[["record"]]]  # ... and with its writes started before the checkpoint
