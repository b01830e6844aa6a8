"""One partition's hot path, without a broker: records in, effects out, checked by pandas."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.spec import DEFAULT_FEATURES
from infra.dead_letter import Reason
from streams.generator import generate_events
from streams.processor import PartitionProcessor, merge_effects
from testing.oracle import Stream, pandas_oracle

NOW = 1_800_000_000_000  # the decoder's clock: after every generated event


@dataclass(frozen=True)
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None


def _events(n: int, seed: int = 3):
    return generate_events(n, users=7, start_ms=1_700_000_000_000, mean_gap_ms=700, seed=seed)


def _oracle(events) -> np.ndarray:
    stream = Stream(events.user_id, events.event_time_ms, events.amount, events.merchant_id)
    return pandas_oracle(stream, DEFAULT_FEATURES)


def _processor(partition: int = 0) -> PartitionProcessor:
    return PartitionProcessor(
        topic="events", partition=partition, specs=DEFAULT_FEATURES, lateness_ms=60_000
    )


def test_features_equal_pandas_across_batches_and_replays() -> None:
    events = _events(300)
    records = [Rec(i, k, v) for i, (k, v) in enumerate(events.records())]
    proc = _processor()
    first = proc.process(records[:120], now_ms=NOW)
    # A redelivery overlapping what the state holds: the overlap is skipped, not recounted.
    second = proc.process(records[100:], now_ms=NOW)
    assert (first.counts.accepted, first.counts.skipped_replays) == (120, 0)
    assert (second.counts.accepted, second.counts.skipped_replays) == (180, 20)
    assert proc.offset == 299
    got = np.concatenate([first.features, second.features])
    np.testing.assert_allclose(got, _oracle(events), rtol=1e-9)
    assert list(second.accepted.offset) == list(range(120, 300))


def test_online_rows_are_each_users_newest() -> None:
    events = _events(200)
    records = [Rec(i, k, v) for i, (k, v) in enumerate(events.records())]
    effects = _processor().process(records, now_ms=NOW)
    expected = _oracle(events)
    users, newest = np.unique(events.user_id[::-1], return_index=True)
    newest = len(events.user_id) - 1 - newest  # last occurrence of each user
    order = np.argsort(effects.online_user_id)
    assert list(effects.online_user_id[order]) == list(users)
    np.testing.assert_allclose(effects.online_features[order], expected[newest], rtol=1e-9)
    assert list(effects.online_event_time_ms[order]) == list(events.event_time_ms[newest])


def test_bad_records_become_dead_letters_in_offset_order_and_the_rest_flows() -> None:
    events = _events(50)
    good = list(events.records())
    records = [Rec(i, k, v) for i, (k, v) in enumerate(good[:20])]
    records += [Rec(20, b"1", b"{not json"), Rec(21, b"1", b'{"event_id": "x"}')]
    records += [Rec(22 + i, k, v) for i, (k, v) in enumerate(good[20:])]
    effects = _processor(partition=5).process(records, now_ms=NOW)
    assert effects.counts.accepted == 50
    assert [(d.offset, d.reason) for d in effects.dead_letters] == [
        (20, Reason.MALFORMED_JSON),
        (21, Reason.SCHEMA),
    ]
    assert all(d.partition == 5 and d.topic == "events" for d in effects.dead_letters)
    np.testing.assert_allclose(effects.features, _oracle(events), rtol=1e-9)


def test_merged_effects_keep_every_partitions_rows() -> None:
    a, b = _events(40, seed=1), _events(60, seed=2)
    ea = _processor(0).process([Rec(i, k, v) for i, (k, v) in enumerate(a.records())], now_ms=NOW)
    eb = _processor(1).process([Rec(i, k, v) for i, (k, v) in enumerate(b.records())], now_ms=NOW)
    merged = merge_effects([ea, eb])
    assert merged.counts.accepted == 100 and len(merged.accepted) == 100
    np.testing.assert_array_equal(merged.features, np.concatenate([ea.features, eb.features]))
    table = merged.offline(DEFAULT_FEATURES)
    assert table.num_rows == 100
    assert sorted(set(table.column("kafka_partition").to_pylist())) == [0, 1]
