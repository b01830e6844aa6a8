"""The checkpoint schedule without a broker: a fake commit, a fake clock, real state files."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from features.spec import DEFAULT_FEATURES
from features.state import WindowState
from streams.checkpoint import CheckpointStore
from streams.checkpointer import Checkpointer, OffsetWentBackwards
from streams.generator import generate_events
from streams.processor import PartitionProcessor

TOPIC = "events"


@dataclass(frozen=True)
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Commits:
    """Records commits; ``ok=False`` makes them fail as a broker error would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.ok = True

    async def __call__(self, topic: str, partition: int, offset: int) -> bool:
        self.calls.append((topic, partition, offset))
        return self.ok


def _records(n: int, start: int = 0, seed: int = 1, users: int = 5) -> list[Rec]:
    events = generate_events(
        n, users=users, start_ms=1_700_000_000_000 + start * 500, mean_gap_ms=500, seed=seed
    )
    return [Rec(start + i, k, v) for i, (k, v) in enumerate(events.records())]


def _processor(partition: int) -> PartitionProcessor:
    return PartitionProcessor(
        topic=TOPIC, partition=partition, specs=DEFAULT_FEATURES, lateness_ms=60_000
    )


async def _nothing() -> None:
    return None


def _setup(tmp_path: Path, interval: float = 5.0):
    clock, commits = Clock(), Commits()
    store = CheckpointStore(tmp_path / "ckpt")
    return Checkpointer(store, interval, commits, clock), store, clock, commits


def test_due_partition_is_written_then_committed(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp, store, clock, commits = _setup(tmp_path)
        proc = _processor(0)
        cp.track(0, -1)
        proc.process(_records(50))
        drained = []

        async def drain() -> None:
            drained.append(True)

        await cp.maybe({0: proc}, drain)
        assert store.load(TOPIC, 0) is None and not drained, "not due before the interval"
        clock.now += 5.0
        await cp.maybe({0: proc}, drain)
        await cp.settle()
        assert drained == [True], "the stores are drained before the state is copied"
        saved = store.load(TOPIC, 0)
        assert saved is not None and saved.offset == 49
        assert commits.calls == [(TOPIC, 0, 49)]
        restored = WindowState.restore(saved.state, DEFAULT_FEATURES)
        assert restored.snapshot() == proc.state.snapshot()

    asyncio.run(scenario())


def test_idle_partition_is_not_rewritten(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp, store, clock, commits = _setup(tmp_path)
        proc = _processor(0)
        cp.track(0, -1)
        proc.process(_records(10))
        clock.now += 5.0
        await cp.maybe({0: proc}, _nothing)
        await cp.settle()
        path = store.root / f"{TOPIC}-0.ckpt"
        before = path.stat().st_mtime_ns
        clock.now += 50.0
        await cp.maybe({0: proc}, _nothing)
        await cp.settle()
        assert path.stat().st_mtime_ns == before
        assert commits.calls == [(TOPIC, 0, 9)], "committed once, not again"

    asyncio.run(scenario())


def test_restored_partition_is_committed_even_without_new_records(tmp_path: Path) -> None:
    """The restart after a SIGKILL between a checkpoint file and its commit."""

    async def scenario() -> None:
        cp, _, clock, commits = _setup(tmp_path)
        proc = _processor(3)
        proc.process(_records(20))
        cp.track(3, proc.offset)  # as if restored from a checkpoint at offset 19
        clock.now += 5.0
        await cp.maybe({3: proc}, _nothing)
        assert commits.calls == [(TOPIC, 3, 19)]
        clock.now += 5.0
        await cp.maybe({3: proc}, _nothing)
        assert len(commits.calls) == 1

    asyncio.run(scenario())


def test_failed_commit_is_retried_next_interval(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp, _, clock, commits = _setup(tmp_path)
        proc = _processor(0)
        proc.process(_records(5))
        cp.track(0, proc.offset)
        commits.ok = False
        clock.now += 5.0
        await cp.maybe({0: proc}, _nothing)
        assert cp.committed(0) == -1
        commits.ok = True
        clock.now += 5.0
        await cp.maybe({0: proc}, _nothing)
        assert cp.committed(0) == 4 and len(commits.calls) == 2

    asyncio.run(scenario())


def test_most_overdue_partition_first_one_write_at_a_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp, store, clock, _ = _setup(tmp_path, interval=1.0)
        procs = {p: _processor(p) for p in range(3)}
        for p, proc in procs.items():
            cp.track(p, -1)
            clock.now += 0.1  # partition 0 tracked first: most overdue
            proc.process(_records(10, seed=p))
        clock.now += 2.0
        await cp.maybe(procs, _nothing)
        await cp.maybe(procs, _nothing)  # the first write may still be in flight
        await cp.settle()
        written = sorted(int(p.stem.split("-")[-1]) for p in store.root.glob("*.ckpt"))
        assert written[0] == 0
        await cp.maybe(procs, _nothing)
        await cp.settle()
        await cp.maybe(procs, _nothing)
        await cp.settle()
        written = sorted(int(p.stem.split("-")[-1]) for p in store.root.glob("*.ckpt"))
        assert written == [0, 1, 2]

    asyncio.run(scenario())


def test_offset_going_backwards_is_refused(tmp_path: Path) -> None:
    cp, store, _, _ = _setup(tmp_path)
    proc = _processor(0)
    proc.process(_records(30))
    cp.track(0, -1)
    cp.save_now(proc, 0)
    older = _processor(0)
    older.process(_records(10))
    with pytest.raises(OffsetWentBackwards, match="offset 9 would overtake the one at 29"):
        cp.save_now(older, 0)
    saved = store.load(TOPIC, 0)
    assert saved is not None and saved.offset == 29


def test_write_error_is_raised_and_nothing_committed(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp, store, clock, commits = _setup(tmp_path)
        proc = _processor(0)
        cp.track(0, -1)
        proc.process(_records(5))

        def full_disk(*_args: object, **_kw: object) -> None:
            raise OSError(28, "No space left on device")

        store.save = full_disk  # type: ignore[method-assign]
        clock.now += 5.0
        await cp.maybe({0: proc}, _nothing)
        with pytest.raises(OSError, match="No space left"):
            await cp.settle()
        assert commits.calls == [], "no commit for a checkpoint that was not written"

    asyncio.run(scenario())


def _assert_same(a: WindowState, b: WindowState) -> None:
    """The same users, rows and next features for each (entity order may differ)."""
    keys = np.sort(a.capture().keys)
    np.testing.assert_array_equal(keys, np.sort(b.capture().keys))
    assert a.n_live_rows == b.n_live_rows
    probe = (keys, np.full(len(keys), 1_700_003_000_000), np.full(len(keys), 7.0),
             np.ones(len(keys), np.int64))  # fmt: skip
    for x, y in zip(a.peek(*probe), b.peek(*probe), strict=True):
        np.testing.assert_array_equal(x, y)


def test_whole_once_then_changes_until_they_outgrow_it(tmp_path: Path) -> None:
    """A fresh partition's first checkpoint is whole, the next ones hold its changes (files
    ``.ckpt.1``, ``.ckpt.2``, ...), and a whole one starts a new chain once
    the changes hold as many bytes; the chain read back restores the state exactly."""

    async def scenario() -> None:
        cp, store, clock, _ = _setup(tmp_path)
        proc = _processor(0)
        cp.track(0, -1)
        kinds = []
        proc.process(_records(2_000, users=300))  # then a few users a time
        for i in range(12):
            proc.process(_records(20, start=2_000 + 20 * i, seed=i, users=300))
            clock.now += 5.0
            await cp.maybe({0: proc}, _nothing)
            await cp.settle()
            changes = sorted(p.name for p in (tmp_path / "ckpt").glob(f"{TOPIC}-0.ckpt.*"))
            kinds.append(len(changes))
            loaded = store.load(TOPIC, 0)
            assert loaded is not None and loaded.offset == proc.offset
            assert len(loaded.changes) == len(changes)
            restored = WindowState.restore_chain(loaded.state, loaded.changes, DEFAULT_FEATURES)
            _assert_same(restored, proc.state)
        assert kinds[:3] == [0, 1, 2], kinds  # whole, then changes
        assert 0 in kinds[3:], kinds  # a new chain once the changes outgrew the whole
        # acquired again from its chain, a state goes on with it: changes, not a copy of all
        chain = len(list((tmp_path / "ckpt").glob(f"{TOPIC}-0.ckpt.*")))
        loaded = store.load(TOPIC, 0)
        cp.forget(0)
        cp.track(0, proc.offset, loaded)
        proc.process(_records(5, start=2_240, seed=99, users=300))
        clock.now += 5.0
        await cp.maybe({0: proc}, _nothing)
        await cp.settle()
        assert len(list((tmp_path / "ckpt").glob(f"{TOPIC}-0.ckpt.*"))) == chain + 1
        # acquired fresh (no checkpoint restored), its first checkpoint is whole
        cp.forget(0)
        cp.track(0, proc.offset)
        proc.process(_records(5, start=2_245, seed=98, users=300))
        clock.now += 5.0
        await cp.maybe({0: proc}, _nothing)
        await cp.settle()
        assert not list((tmp_path / "ckpt").glob(f"{TOPIC}-0.ckpt.*"))

    asyncio.run(scenario())
