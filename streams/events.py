"""The ``events`` topic schema and its decoder into columnar batches.

An event is a JSON object::

    {"event_id": "e-1", "user_id": 42, "merchant_id": 7, "amount": 12.5,
     "event_time": 1767225600000}          # or "2026-01-01T00:00:00Z"

Decoding never raises on bad input: each record either becomes a row of an
:class:`EventBatch` (numpy columns, ready for the Numba kernels) or a
:class:`DeadLetter` saying why not (bytewax's oks/errs split).

>>> batch, dead = decode_events(
...     [b'{"event_id":"a","user_id":1,"merchant_id":2,"amount":3.0,"event_time":1767225600000}',
...      b'{"event_id":"b","user_id":1}'],
...     now_ms=1767225600000)
>>> batch.user_id.tolist(), [d.reason.value for d in dead]
([1], ['schema'])
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
import numpy as np

from streams.dead_letter import DeadLetter, Reason

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: older stamps are unit mistakes

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]


class Event(msgspec.Struct, frozen=True):
    """One transaction event, as producers publish it."""

    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    user_id: Int64
    merchant_id: Int64
    amount: float
    event_time: Int64 | Annotated[datetime, msgspec.Meta(tz=True)]


_decoder = msgspec.json.Decoder(Event)


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Accepted events as columns; ``offset`` is -1 where there is no Kafka source."""

    event_id: list[str]
    user_id: np.ndarray  # int64
    merchant_id: np.ndarray  # int64
    amount: np.ndarray  # float64
    event_time_ms: np.ndarray  # int64, epoch milliseconds
    partition: np.ndarray  # int32
    offset: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.event_id)

    def take(self, mask: np.ndarray) -> EventBatch:
        """The rows where ``mask`` is true (a boolean or index array)."""
        idx = np.flatnonzero(mask) if mask.dtype == bool else mask
        return EventBatch(
            [self.event_id[i] for i in idx],
            self.user_id[idx],
            self.merchant_id[idx],
            self.amount[idx],
            self.event_time_ms[idx],
            self.partition[idx],
            self.offset[idx],
        )


def epoch_ms(value: int | datetime) -> int:
    if isinstance(value, int):
        return value
    # Integer timedelta division: exact, unlike datetime.timestamp()'s float.
    return (value - _EPOCH) // _ONE_MS


def classify_error(exc: msgspec.MsgspecError) -> Reason:
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return Reason.MALFORMED_JSON
    if text.endswith(("`$.event_time`", "`$.outcome_time`")):
        return Reason.BAD_TIMESTAMP
    if "<=" in text or ">=" in text or "out of range" in text:
        return Reason.OUT_OF_RANGE
    return Reason.SCHEMA


def decode_events(
    values: Sequence[bytes | None],
    *,
    keys: Sequence[bytes | None] | None = None,
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
    topic: str = "events",
    now_ms: int | None = None,
    max_future_skew_ms: int = 86_400_000,
    max_record_bytes: int = 65_536,
) -> tuple[EventBatch, list[DeadLetter]]:
    """Validate raw records; return the accepted batch and the dead letters.

    When ``keys`` is given (records from Kafka) a key must be the decimal
    ``user_id``: a partition owns its users' window state, so a record keyed
    otherwise would be counted in another partition's state.
    """
    n = len(values)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    latest_ok = now_ms + max_future_skew_ms
    part_of = (lambda i: partitions[i]) if partitions is not None else (lambda i: -1)
    off_of = (lambda i: offsets[i]) if offsets is not None else (lambda i: -1)

    ids: list[str] = []
    users: list[int] = []
    merchants: list[int] = []
    amounts: list[float] = []
    times: list[int] = []
    kept: list[int] = []
    dead: list[DeadLetter] = []

    def reject(i: int, reason: Reason, detail: str) -> None:
        key = keys[i] if keys is not None else None
        dead.append(DeadLetter(reason, detail, values[i], key, topic, part_of(i), off_of(i)))

    for i in range(n):
        raw = values[i]
        if raw is None:
            reject(i, Reason.MALFORMED_JSON, "record has no value (tombstone)")
            continue
        if len(raw) > max_record_bytes:
            reject(i, Reason.OVERSIZED, f"{len(raw)} bytes > limit {max_record_bytes}")
            continue
        try:
            event = _decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            reject(i, classify_error(exc), str(exc))
            continue
        if not math.isfinite(event.amount) or event.amount < 0:
            reject(i, Reason.OUT_OF_RANGE, f"amount must be finite and >= 0, got {event.amount}")
            continue
        t_ms = epoch_ms(event.event_time)
        if t_ms < MIN_EVENT_TIME_MS:
            reject(i, Reason.TOO_OLD, f"event_time {t_ms} ms is before 2000-01-01")
            continue
        if t_ms > latest_ok:
            reject(i, Reason.IN_FUTURE, f"event_time {t_ms} ms is {t_ms - now_ms} ms ahead")
            continue
        if keys is not None and keys[i] != str(event.user_id).encode():
            reject(i, Reason.BAD_KEY, f"key {keys[i]!r} is not user_id {event.user_id}")
            continue
        ids.append(event.event_id)
        users.append(event.user_id)
        merchants.append(event.merchant_id)
        amounts.append(event.amount)
        times.append(t_ms)
        kept.append(i)

    batch = EventBatch(
        ids,
        np.array(users, dtype=np.int64),
        np.array(merchants, dtype=np.int64),
        np.array(amounts, dtype=np.float64),
        np.array(times, dtype=np.int64),
        np.array([part_of(i) for i in kept], dtype=np.int32),
        np.array([off_of(i) for i in kept], dtype=np.int64),
    )
    return batch, dead
