"""Chains of checkpoints (a whole one, then changes) in both stores, files and Kafka topics:
a load returns the newest complete chain, whatever was cut short or left over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from featflow.settings import Settings
from streams.checkpoint import Checkpoint, Checkpoints
from streams.checkpoint_stores import open_checkpoints
from streams.checkpoint_topic import CHUNK


@pytest.fixture(params=["files", "kafka"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def _open(settings: Settings, kind: str) -> Checkpoints:
    s = settings.model_copy(update={"checkpoint_store": kind})
    return open_checkpoints(s.stores, s.kafka, s.topics)


def test_a_chain_is_read_back_whole_by_another_process(settings: Settings, kind: str) -> None:
    topic = settings.topics.events
    store = _open(settings, kind)
    base = os.urandom(CHUNK + 99)
    store.save(topic, 0, Checkpoint(10, base, dlq_from=1))
    parts = [os.urandom(n) for n in (0, 17, 2 * CHUNK + 1)]
    for i, part in enumerate(parts):
        store.save(topic, 0, Checkpoint(11 + i, part, dlq_from=2 + i), changes=True)
    assert _open(settings, kind).load(topic, 0) == Checkpoint(13, base, 4, tuple(parts))
    # a new whole checkpoint ends the chain: its changes are not the new one's
    fresh = _open(settings, kind)
    fresh.save(topic, 0, Checkpoint(20, b"whole"))
    assert _open(settings, kind).load(topic, 0) == Checkpoint(20, b"whole")
    fresh.save(topic, 0, Checkpoint(21, b"one"), changes=True)
    # changes from a process that never loaded: it finds the chain itself
    _open(settings, kind).save(topic, 0, Checkpoint(22, b"two"), changes=True)
    assert _open(settings, kind).load(topic, 0) == Checkpoint(22, b"whole", 0, (b"one", b"two"))


def test_changes_need_a_whole_checkpoint(settings: Settings, kind: str) -> None:
    with pytest.raises(ValueError, match="need a whole checkpoint first"):
        _open(settings, kind).save(settings.topics.events, 1, Checkpoint(1, b"x"), changes=True)


def test_changes_of_an_older_chain_are_not_read(settings: Settings, tmp_path: Path) -> None:
    """A writer killed between a new whole checkpoint and the removal of the old chain's
    changes leaves them; they belong to another chain and are passed over."""
    topic = settings.topics.events
    store = _open(settings, "files")
    store.save(topic, 2, Checkpoint(1, b"old"))
    store.save(topic, 2, Checkpoint(2, b"old+1"), changes=True)
    store.save(topic, 2, Checkpoint(3, b"old+2"), changes=True)
    folder = settings.stores.checkpoint_dir
    left = {p.name: p.read_bytes() for p in folder.glob(f"{topic}-2.ckpt.*")}
    store.save(topic, 2, Checkpoint(4, b"new"))
    for name, data in left.items():  # as if the removal never happened
        (folder / name).write_bytes(data)
    assert _open(settings, "files").load(topic, 2) == Checkpoint(4, b"new")
