"""Per-partition checkpoints: window state together with the offset it reflects.

The pair is written atomically (``infra.files.write_durably``), so after a crash a
partition restarts from a state that matches its offset exactly: records at or
below the offset are skipped, later ones are replayed, and since the state is
the one from before them, nothing is counted twice. Kafka's committed offset is
only informational (lag); the checkpoint is the source of truth.
"""

from __future__ import annotations

import json
import struct
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

    def save(self, topic: str, partition: int, checkpoint: Checkpoint) -> None:
        """Replace the partition's checkpoint, atomically and durably."""
        ...


class CheckpointStore:
    """Checkpoints in a directory, one file per topic partition.

    A directory shared by the workers of one machine (``$FEATFLOW_HOME``) lets
    a partition's state follow it to another worker on rebalance.
    """

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for leftover in stale(root.glob(".*.tmp"), temporary_writer):  # a writer killed
            leftover.unlink(missing_ok=True)

    def _path(self, topic: str, partition: int) -> Path:
        return self.root / f"{topic}-{partition}.ckpt"

    def load(self, topic: str, partition: int) -> Checkpoint | None:
        """The partition's checkpoint, or None if it has none; ValueError for a foreign file."""
        path = self._path(topic, partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not data.startswith(_MAGIC):
            raise ValueError(f"{path} is not a featflow checkpoint")
        start = len(_MAGIC)
        (header_len,) = _HEADER_LEN.unpack_from(data, start)
        start += _HEADER_LEN.size
        header = json.loads(data[start : start + header_len])
        return Checkpoint(
            offset=int(header["offset"]),
            state=data[start + header_len :],
            dlq_from=int(header.get("dlq_from", 0)),
        )

    def save(self, topic: str, partition: int, checkpoint: Checkpoint) -> None:
        """Replace the partition's checkpoint atomically (temp file, fsync, rename, dir fsync)."""
        path = self._path(topic, partition)
        header = json.dumps({"offset": checkpoint.offset, "dlq_from": checkpoint.dlq_from}).encode()
        write_durably(path, _MAGIC + _HEADER_LEN.pack(len(header)) + header, checkpoint.state)
