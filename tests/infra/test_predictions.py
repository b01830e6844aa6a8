"""The predictions decoder: every record is a prediction or a dead letter with its reason."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.dead_letter import Reason
from infra.events import EventRules
from infra.predictions import decode_predictions

GOOD = {
    "prediction_id": "p1",
    "user_id": 42,
    "score": 0.25,
    "model_version": "v0001",
    "event_id": "e1",
    "event_time": 1_767_225_600_000,
    "features": {"txn_count_5m": 3.0},
}


def _one(raw: bytes | None, rules: EventRules = EventRules()):
    ok, dead = decode_predictions([raw], partitions=[3], offsets=[9], rules=rules)
    assert len(ok) + len(dead) == 1
    return ok[0] if ok else dead[0]


def _with(**changes: object) -> bytes:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


def test_a_good_record() -> None:
    p = _one(_with())
    assert (p.prediction_id, p.score, p.time_ms, p.role, p.features_found) == (
        "p1", 0.25, 1_767_225_600_000, "champion", True
    )  # fmt: skip
    http = _one(_with(event_id=..., event_time=..., prediction_time=1_767_225_600_500))
    assert http.event_id is None and http.time_ms == 1_767_225_600_500


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, Reason.MALFORMED_JSON),
        (b"{not json", Reason.MALFORMED_JSON),
        (b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}", Reason.MALFORMED_JSON),  # recursion
        (b"[" * 5000 + b"]" * 5000, Reason.SCHEMA),  # judged at the first byte: not an object
        (_with(score=1.5), Reason.OUT_OF_RANGE),
        (_with(score=-0.1), Reason.OUT_OF_RANGE),
        (_with(user_id=2**63), Reason.OUT_OF_RANGE),
        (_with(score="0.5"), Reason.SCHEMA),
        (_with(prediction_id=...), Reason.SCHEMA),
        (_with(prediction_id=""), Reason.OUT_OF_RANGE),  # "length >= 1", as for event ids
        (_with(role="boss"), Reason.SCHEMA),
        (_with(event_time=...), Reason.SCHEMA),  # no time at all
        (_with(event_time=5), Reason.TOO_OLD),
        (_with(features={"a": "x"}), Reason.SCHEMA),
        (_with().replace(b"3.0", b"1e999"), Reason.OUT_OF_RANGE),  # inf
        (_with().replace(b"0.25", b"NaN"), Reason.MALFORMED_JSON),
    ],
)
def test_bad_records(raw: bytes | None, reason: Reason) -> None:
    d = _one(raw)
    assert d.reason == reason, d.detail
    assert (d.topic, d.partition, d.offset, d.value) == ("predictions", 3, 9, raw)


def test_oversized() -> None:
    d = _one(_with(), EventRules(max_record_bytes=50))
    assert d.reason == Reason.OVERSIZED


@settings(max_examples=2000, deadline=None)
@given(
    st.binary(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=15), inner, max_size=6)
        ),
        max_leaves=30,
    ).map(lambda v: json.dumps(v).encode())
)
def test_never_raises(raw: bytes) -> None:
    ok, dead = decode_predictions([raw], partitions=[0], offsets=[0])
    assert len(ok) + len(dead) == 1
    assert all(d.detail for d in dead)
