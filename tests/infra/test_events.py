"""Decoder unit tests: every malformed shape gets its reason, good records are untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.dead_letter import Reason
from infra.events import AMOUNT_LIMIT, EventRules, decode_events

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
    (good(amount=1e308), Reason.OUT_OF_RANGE),  # finite, but sums of two overflow
    (good(amount=1e12 * (1 + 1e-15)), Reason.OUT_OF_RANGE),  # just above the default bound
    # ~1,000 levels deep (2 KB): msgspec raises RecursionError, which once crashed the worker
    (good()[:-1] + b', "x": ' + b"[" * 1000 + b"]" * 1000 + b"}", Reason.MALFORMED_JSON),
    (b"[" * 5000 + b"]" * 5000, Reason.SCHEMA),  # judged at the first byte: not an object
    (b'{"x": ' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b", " + good()[1:], Reason.MALFORMED_JSON),
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
    batch, dead = decode_events(
        values, keys=keys, now_ms=NOW, rules=EventRules(max_record_bytes=150)
    )
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
    assert len(decode_events(raw, now_ms=NOW, rules=EventRules(max_future_skew_ms=4000))[1]) == 1
    assert len(decode_events(raw, now_ms=NOW, rules=EventRules(max_future_skew_ms=6000))[1]) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode))))
def test_arbitrary_bytes_never_raise_and_are_accounted(values: list[bytes]) -> None:
    batch, dead = decode_events(values, offsets=list(range(len(values))), now_ms=NOW)
    assert len(batch) + len(dead) == len(values)
    assert sorted([*batch.offset.tolist(), *(d.offset for d in dead)]) == list(range(len(values)))
    assert batch.amount.dtype == np.float64


def test_amount_bound_is_a_setting_and_the_default_admits_it() -> None:
    raw = [good(1, amount=1e12), good(2, amount=5e5)]
    assert len(decode_events(raw, now_ms=NOW)[0]) == 2
    batch, dead = decode_events(raw, now_ms=NOW, rules=EventRules(max_amount=1e6))
    assert batch.user_id.tolist() == [2]
    assert [d.reason for d in dead] == [Reason.OUT_OF_RANGE]
    assert "<= 1e+06" in dead[0].detail
    with pytest.raises(ValueError, match="max_amount"):
        EventRules(max_amount=AMOUNT_LIMIT * 10)


# JSON documents of any shape and depth: nested objects and arrays around scalars.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=40,
)


def _deep(depth: int, kind: str) -> bytes:
    opened, closed = ("[", "]") if kind == "array" else ('{"k":', "}")
    return (opened * depth + "1" + closed * depth).encode()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            _json.map(lambda v: json.dumps(v).encode()),
            # a valid event with an extra field of any shape (msgspec skips unknown fields)
            _json.map(lambda v: good(3)[:-1] + b', "extra": ' + json.dumps(v).encode() + b"}"),
            # a generated document in place of each field
            st.tuples(st.sampled_from(["event_id", "user_id", "amount", "event_time"]), _json).map(
                lambda kv: good(4, **{kv[0]: kv[1]})
            ),
            st.tuples(st.integers(1, 20_000), st.sampled_from(["array", "object"])).map(
                lambda d: _deep(*d)
            ),
        ),
        max_size=12,
    )
)
def test_generated_json_of_any_shape_and_depth_is_judged(values: list[bytes]) -> None:
    """Every record is accepted or dead-lettered with a reason, whatever its shape."""
    batch, dead = decode_events([good(1), *values], offsets=range(len(values) + 1), now_ms=NOW)
    assert 0 in batch.offset.tolist()
    assert len(batch) + len(dead) == len(values) + 1
    assert all(d.reason in set(Reason) and d.detail for d in dead)
    assert np.isfinite(batch.amount).all() and (batch.amount <= EventRules().max_amount).all()
