"""The checkpoint file: atomic, self-describing, and refused when it is not one."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.checkpoint import Checkpoint, CheckpointStore


def test_round_trip_and_missing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "c")
    assert store.load("events", 0) is None
    blob = bytes(range(256)) * 10
    store.save("events", 0, Checkpoint(offset=41, state=blob))
    store.save("events", 1, Checkpoint(offset=-1, state=b""))
    assert store.load("events", 0) == Checkpoint(41, blob)
    assert store.load("events", 1) == Checkpoint(-1, b"")
    store.save("events", 0, Checkpoint(offset=99, state=b"newer"))
    assert store.load("events", 0) == Checkpoint(99, b"newer")
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".")] == []


def test_a_write_cut_short_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "c")
    store.save("events", 2, Checkpoint(offset=7, state=b"good"))
    # A crash mid-write leaves only a temp file; the checkpoint itself is untouched.
    (tmp_path / "c" / ".events-2.ckpt.12345.tmp").write_bytes(b"FFCK1\n\x00\x00")
    assert store.load("events", 2) == Checkpoint(7, b"good")


def test_a_file_that_is_not_a_checkpoint_is_an_error(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "c")
    (tmp_path / "c" / "events-3.ckpt").write_bytes(b"PK\x03\x04 something else")
    with pytest.raises(ValueError, match="is not a featflow checkpoint"):
        store.load("events", 3)
