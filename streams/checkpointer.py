"""When each partition is checkpointed, one write at a time, and its offset committed after.

The worker's loop calls :meth:`Checkpointer.maybe` between fetches. It picks the most
overdue partition and, if its interval has passed and it has new records, copies its
state there (after the store writes the state reflects: ``drain``), encodes and writes
the file in a thread while fetches go on, and only then commits the offset to Kafka.
One partition per pass: 8 partitions' snapshots and fsyncs at once stalled the loop for
100-200 ms every interval, the p99 of freshness (and seconds for a state of 1M users).

A state that tracks its changes (``WindowState.checkpoint``) is checkpointed by its changes
only, on top of the chain it was restored from (a fresh state's first checkpoint is whole):
the copy in the loop costs what changed since, not what is held. A whole checkpoint starts a
new chain once the chain's changes hold as many bytes as its whole checkpoint, or number
``MAX_CHANGES``: what a restore reads stays within twice the state.

Kafka's committed offset is informational (lag); the checkpoint file is the truth. A
partition restored from a checkpoint is committed once even if nothing new arrives: a
SIGKILL between a file and its commit would otherwise leave the group behind for good.
An offset that goes backwards is refused: a checkpoint must never be overtaken by an
older one (Quix Streams' checkpoint refuses the same).

Nothing here needs a broker: ``commit`` is any coroutine function, so tests drive it
with a fake and a fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, runtime_checkable

from streams.checkpoint import Checkpoint, Checkpoints


class Encodable(Protocol):
    """A detached copy of a partition's state."""

    def encode(self) -> bytes:
        """The checkpoint bytes."""
        ...


class State(Protocol):
    """What a checkpoint takes of a partition's state."""

    def capture(self) -> Encodable:
        """A detached copy, encoded later in a thread."""
        ...

    def snapshot(self) -> bytes:
        """The encoded state, now."""
        ...


@runtime_checkable
class TracksChanges(State, Protocol):
    """A state that can copy only what changed since its last checkpoint."""

    def checkpoint(self, *, changes: bool) -> Encodable:
        """A detached copy of the whole state or of its changes; the next changes count
        from here."""
        ...


MAX_CHANGES = 32  # checkpoints of changes in a chain before a whole one


class Checkpointable(Protocol):
    """A partition's processor: its state and the offset that state reflects."""

    topic: str
    partition: int
    offset: int

    @property
    def state(self) -> State:
        """The partition's state."""
        ...


Commit = Callable[[str, int, int], Awaitable[bool]]  # (topic, partition, offset) -> committed?
Mark = Callable[[], Awaitable[int]]  # the DLQ's position now (``Checkpoint.dlq_from``)
Retry = Callable[[str, Callable[[], None]], None]  # (store, write): runs write until it works


def _once(store: str, write: Callable[[], None]) -> None:
    write()


async def _no_dlq() -> int:
    return 0


class OffsetWentBackwards(RuntimeError):
    """A checkpoint older than the one already written for its partition."""


class Checkpointer:
    """Checkpoint schedule and bookkeeping for the partitions a worker owns."""

    def __init__(
        self,
        store: Checkpoints,
        interval_s: float,
        commit: Commit,
        clock: Callable[[], float] = time.monotonic,
        mark: Mark = _no_dlq,
        retry: Retry = _once,
    ):
        self.store = store
        self.mark = mark
        self.retry = retry  # a full or unwritable disk: wait for it rather than crash
        self.interval_s = interval_s
        self._commit = commit
        self._clock = clock
        self._last: dict[int, float] = {}  # when each partition was last considered
        self._written: dict[int, int] = {}  # offset of each partition's newest checkpoint
        # Offset last committed by this worker; -1 until its first commit after acquiring.
        self._committed: dict[int, int] = {}
        self._writing: asyncio.Task[None] | None = None
        # per partition, its chain since acquired: [whole bytes, changes' bytes, changes]
        self._chains: dict[int, list[int]] = {}

    # -- ownership -------------------------------------------------------------
    def track(self, partition: int, offset: int, restored: Checkpoint | None = None) -> None:
        """Start scheduling ``partition``, whose state reflects ``offset``: ``restored``'s,
        or -1 for a fresh state. A state restored from a chain goes on with it (its next
        checkpoint holds the changes since: a restored million users is not copied whole);
        a fresh one starts a chain with its first checkpoint."""
        self._last[partition] = self._clock()
        self._written[partition] = offset
        self._committed[partition] = -1
        self._chains.pop(partition, None)
        if restored is not None:
            changes = [len(c) for c in restored.changes]
            self._chains[partition] = [len(restored.state), sum(changes), len(changes)]

    def forget(self, partition: int) -> None:
        """Stop scheduling ``partition`` (revoked)."""
        self._last.pop(partition, None)
        self._written.pop(partition, None)
        self._committed.pop(partition, None)
        self._chains.pop(partition, None)

    def checkpointed(self, partition: int) -> int:
        """Offset of the newest checkpoint written or being written for ``partition``."""
        return self._written[partition]

    def committed(self, partition: int) -> int:
        """Offset this worker last committed for ``partition`` (-1: none since acquired)."""
        return self._committed[partition]

    # -- writing ---------------------------------------------------------------
    def save_now(self, processor: Checkpointable, dlq_from: int) -> None:
        """Write ``processor``'s checkpoint synchronously (on release and stop; the caller
        has drained the store writes, settled any write in flight and taken ``mark``)."""
        self._advance(processor.partition, processor.offset)
        state = processor.state.snapshot()
        checkpoint = Checkpoint(processor.offset, state, dlq_from)
        topic, partition = processor.topic, processor.partition
        self.retry("checkpoint", lambda: self.store.save(topic, partition, checkpoint))
        self._chains[partition] = [len(state), 0, 0]
        self._last[processor.partition] = self._clock()

    async def maybe(
        self,
        processors: Mapping[int, Checkpointable],
        drain: Callable[[], Awaitable[None]],
    ) -> None:
        """Checkpoint the most overdue partition of ``processors`` if it is due.

        ``drain`` waits for the store writes in flight: the state copied here must not get
        ahead of the stores. Raises the error of a previous write, if any.
        """
        if self._writing is not None:
            if not self._writing.done():
                return  # one file at a time
            await self.settle()
        if not processors:
            return
        processor = min(processors.values(), key=lambda p: self._last[p.partition])
        partition, offset = processor.partition, processor.offset
        now = self._clock()
        if now - self._last[partition] < self.interval_s:
            return
        self._last[partition] = now
        if offset == self._written[partition]:
            # No new record since: the file on disk is this state; commit it if not yet.
            if self._committed[partition] < offset:
                await self._commit_offset(processor.topic, partition, offset)
            return
        await drain()
        dlq_from = await self.mark()  # after every letter of the records up to offset
        state = processor.state
        chain = self._chains.get(partition)
        changes = chain is not None and chain[2] < MAX_CHANGES and chain[1] < chain[0]
        if isinstance(state, TracksChanges):
            snapshot = state.checkpoint(changes=changes)
        else:
            snapshot, changes = state.capture(), False
        self._advance(partition, offset)
        header = Checkpoint(offset, b"", dlq_from)
        self._writing = asyncio.create_task(
            self._write(processor.topic, partition, header, snapshot, changes)
        )

    async def settle(self) -> None:
        """Wait for the checkpoint being written, if any (and raise its error)."""
        task = self._writing
        if task is None:
            return
        try:
            await task
        finally:
            if self._writing is task:
                self._writing = None

    def _advance(self, partition: int, offset: int) -> None:
        if offset < self._written.get(partition, -1):
            raise OffsetWentBackwards(
                f"checkpoint of partition {partition} at offset {offset} would overtake the "
                f"one at {self._written[partition]}"
            )
        self._written[partition] = offset

    async def _write(
        self, topic: str, partition: int, header: Checkpoint, snapshot: Encodable, changes: bool
    ) -> None:
        encoded = await asyncio.to_thread(snapshot.encode)
        checkpoint = dataclasses.replace(header, state=encoded)

        def write() -> None:
            self.store.save(topic, partition, checkpoint, changes=changes)

        await asyncio.to_thread(self.retry, "checkpoint", write)
        chain = self._chains.get(partition)
        if not changes:
            self._chains[partition] = [len(encoded), 0, 0]
        elif chain is not None:
            chain[1] += len(encoded)
            chain[2] += 1
        await self._commit_offset(topic, partition, header.offset)

    async def _commit_offset(self, topic: str, partition: int, offset: int) -> None:
        if offset < 0:
            return
        if await self._commit(topic, partition, offset) and partition in self._committed:
            self._committed[partition] = max(self._committed[partition], offset)
