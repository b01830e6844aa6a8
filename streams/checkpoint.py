"""Per-partition checkpoints: window state together with the offset it reflects.

The pair is written atomically (``infra.files.write_durably``), so after a crash a
partition restarts from a state that matches its offset exactly: records at or
below the offset are skipped, later ones are replayed, and since the state is
the one from before them, nothing is counted twice. Kafka's committed offset is
only informational (lag); the checkpoint is the source of truth.

A checkpoint is whole, or holds only the changes since the one before
(``save(..., changes=True)``): a chain is a whole checkpoint and the changes after
it, and a load returns the newest chain. Each chain has an id, so changes left by
an older chain (a writer killed between a new whole checkpoint and their removal)
are never read as the new one's.
"""

from __future__ import annotations

import itertools
import json
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from infra.files import stale, temporary_writer, write_durably

_MAGIC = b"FFCK1\n"
_HEADER_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A partition's encoded window state and the last offset whose effects it includes."""

    offset: int  # last offset whose effects the state includes; -1 before any
    state: bytes
    # The DLQ's position once every dead letter of the records up to ``offset`` was
    # acknowledged: a replayed record's letter, if one was sent, lies at or after it
    # (``infra.dead_letter_log``). 0 (read all) for a checkpoint written without it.
    dlq_from: int = 0
    # on load: the checkpoints of changes taken after ``state``, oldest first (``offset``
    # and ``dlq_from`` are the newest's)
    changes: tuple[bytes, ...] = ()


class Checkpoints(Protocol):
    """Where a service keeps its checkpoints: files (:class:`CheckpointStore`) or Kafka
    topics (``streams.checkpoint_topic``); chosen by ``streams.checkpoint_stores``."""

    @property
    def root(self) -> object:
        """Where they are, for messages."""
        ...

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        """The partition's newest checkpoint, or None."""
        ...

    def save(
        self, topic: str, partition: int, checkpoint: Checkpoint, *, changes: bool = False
    ) -> None:
        """Write the partition's checkpoint atomically and durably: a whole one (a new
        chain) or, with ``changes``, the changes since the chain's newest."""
        ...


class CheckpointStore:
    """Checkpoints in a directory: per topic partition, ``<topic>-<p>.ckpt`` (the whole
    checkpoint of the chain) and ``<topic>-<p>.ckpt.<n>`` (its changes, n = 1, 2, ...).

    A directory shared by the workers of one machine (``$FEATFLOW_HOME``) lets
    a partition's state follow it to another worker on rebalance.
    """

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for leftover in stale(root.glob(".*.tmp"), temporary_writer):  # a writer killed
            leftover.unlink(missing_ok=True)
        self._chains: dict[tuple[str, int], tuple[str, int]] = {}  # -> (chain id, changes)

    def _path(self, topic: str, partition: int) -> Path:
        return self.root / f"{topic}-{partition}.ckpt"

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        """The partition's newest chain, or None if it has none; ValueError for a foreign
        file."""
        path = self._path(topic, partition)
        base = _read(path)
        if base is None:
            return None
        header, state = base
        chain, changes, last = header.get("chain"), [], header
        for n in itertools.count(1):
            part = _read(path.with_name(f"{path.name}.{n}"))
            if part is None or chain is None or part[0].get("chain") != chain:
                break
            last = part[0]
            changes.append(part[1])
        self._chains[(topic, partition)] = (chain or "", len(changes))
        return Checkpoint(
            offset=int(last["offset"]),
            state=state,
            dlq_from=int(last.get("dlq_from", 0)),
            changes=tuple(changes),
        )

    def save(
        self, topic: str, partition: int, checkpoint: Checkpoint, *, changes: bool = False
    ) -> None:
        """A whole checkpoint (replacing the chain) or changes after the chain's newest, each
        atomic (temp file, fsync, rename, dir fsync)."""
        path = self._path(topic, partition)
        key = (topic, partition)
        header = {"offset": checkpoint.offset, "dlq_from": checkpoint.dlq_from}
        if not changes:
            chain = uuid.uuid4().hex
            _write(path, header | {"chain": chain}, checkpoint.state)
            for older in path.parent.glob(f"{path.name}.*"):  # the replaced chain's changes
                older.unlink(missing_ok=True)
            self._chains[key] = (chain, 0)
            return
        if key not in self._chains:
            self.load(topic, partition)
        chain, n = self._chains.get(key, ("", 0))
        if not chain:
            raise ValueError(f"changes of {topic}-{partition} need a whole checkpoint first")
        _write(path.with_name(f"{path.name}.{n + 1}"), header | {"chain": chain}, checkpoint.state)
        self._chains[key] = (chain, n + 1)


def _read(path: Path) -> tuple[dict, bytes] | None:
    """A checkpoint file's header and state, None if there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if not data.startswith(_MAGIC):
        raise ValueError(f"{path} is not a featflow checkpoint")
    start = len(_MAGIC)
    (header_len,) = _HEADER_LEN.unpack_from(data, start)
    start += _HEADER_LEN.size
    return json.loads(data[start : start + header_len]), data[start + header_len :]


def _write(path: Path, header: dict, state: bytes) -> None:
    encoded = json.dumps(header).encode()
    write_durably(path, _MAGIC + _HEADER_LEN.pack(len(encoded)) + encoded, state)
