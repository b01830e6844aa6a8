"""Decoder unit tests: every malformed shape gets its reason, good records are untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.dead_letter import Reason
from streams.events import decode_events

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def good(i: int = 1, **override: object) -> bytes:
    value = {
        "event_id": f"e{i}",
        "user_id": i,
        "merchant_id": 7,
        "amount": 12.5,
        "event_time": NOW - 1000,
    }
    value.update(override)
    return json.dumps(value).encode()


BAD = [
    (b"not json", Reason.MALFORMED_JSON),
    (b"\xff\xfe", Reason.MALFORMED_JSON),
    (b"[1, 2]", Reason.SCHEMA),
    (b'"a string"', Reason.SCHEMA),
    (b"{}", Reason.SCHEMA),
    (good(user_id="12"), Reason.SCHEMA),
    (good(user_id=1.5), Reason.SCHEMA),
    (good(user_id=True), Reason.SCHEMA),
    (good(event_id=""), Reason.OUT_OF_RANGE),
    (good(user_id=2**63), Reason.OUT_OF_RANGE),
    (good(merchant_id=-(2**63) - 1), Reason.OUT_OF_RANGE),
    (good(amount=-0.01), Reason.OUT_OF_RANGE),
    (good(amount="12"), Reason.SCHEMA),
    (good().replace(b"12.5", b"NaN"), Reason.MALFORMED_JSON),
    (good().replace(b"12.5", b"Infinity"), Reason.MALFORMED_JSON),
    (good().replace(b"12.5", b"1e400"), Reason.OUT_OF_RANGE),
    (good(event_time="yesterday"), Reason.BAD_TIMESTAMP),
    (good(event_time="2026-01-01T00:00:00"), Reason.BAD_TIMESTAMP),  # no offset
    (good(event_time=12.5), Reason.BAD_TIMESTAMP),
    (good(event_time=946_684_799_999), Reason.TOO_OLD),
    (good(event_time=NOW + 86_400_001), Reason.IN_FUTURE),
    (good(event_time=2**63), Reason.BAD_TIMESTAMP),
    (None, Reason.MALFORMED_JSON),
]


@pytest.mark.parametrize(("raw", "reason"), BAD)
def test_each_bad_record_gets_its_reason(raw: bytes | None, reason: Reason) -> None:
    batch, dead = decode_events([good(1), raw, good(2)], offsets=[10, 11, 12], now_ms=NOW)
    assert batch.user_id.tolist() == [1, 2]
    assert batch.offset.tolist() == [10, 12]
    assert [(d.reason, d.offset, d.value) for d in dead] == [(reason, 11, raw)]
    assert dead[0].detail


def test_oversized_and_bad_key() -> None:
    big = good(3, event_id="x" * 200)
    values = [good(1), big, good(2)]
    keys = [b"1", b"3", b"99"]
    batch, dead = decode_events(values, keys=keys, now_ms=NOW, max_record_bytes=150)
    assert batch.user_id.tolist() == [1]
    assert [d.reason for d in dead] == [Reason.OVERSIZED, Reason.BAD_KEY]
    assert dead[1].key == b"99"


def test_rfc3339_times_are_exact_milliseconds() -> None:
    raw = [
        good(1, event_time="2026-01-01T00:00:00.123Z"),
        good(2, event_time="2026-01-01T01:00:00.5+01:00"),
        good(3, event_time=NOW - 7),
    ]
    batch, dead = decode_events(raw, now_ms=NOW)
    assert dead == []
    assert batch.event_time_ms.tolist() == [NOW + 123, NOW + 500, NOW - 7]


def test_future_skew_is_a_setting() -> None:
    raw = [good(1, event_time=NOW + 5000)]
    assert len(decode_events(raw, now_ms=NOW, max_future_skew_ms=4000)[1]) == 1
    assert len(decode_events(raw, now_ms=NOW, max_future_skew_ms=6000)[1]) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode))))
def test_arbitrary_bytes_never_raise_and_are_accounted(values: list[bytes]) -> None:
    batch, dead = decode_events(values, offsets=list(range(len(values))), now_ms=NOW)
    assert len(batch) + len(dead) == len(values)
    assert sorted([*batch.offset.tolist(), *(d.offset for d in dead)]) == list(range(len(values)))
    assert batch.amount.dtype == np.float64
