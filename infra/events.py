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

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
import numpy as np
import pyarrow as pa

from infra.arrow import from_numpy
from infra.dead_letter import DeadLetter, Reason
from infra.isolation import describe

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: older stamps are unit mistakes
EVENT_ID_MAX_CHARS = 256
# The largest amount bound one may configure. Window sums of squares then stay below 1e200
# for any window that fits in memory, so no feature can overflow to inf (test_events.py
# and tests/features/test_finite.py drive the kernels at this bound).
AMOUNT_LIMIT = 1e100

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]  # record ids, versions
# JSON spells no NaN, but 1e999 decodes to inf: these bounds refuse it inside the C decoder
Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]


class Event(msgspec.Struct, frozen=True, gc=False):
    """One transaction event, as producers publish it."""

    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=EVENT_ID_MAX_CHARS)]
    user_id: Int64
    merchant_id: Int64
    amount: float
    event_time: Int64 | Annotated[datetime, msgspec.Meta(tz=True)]


_decoder = msgspec.json.Decoder(Event)


@dataclass(frozen=True, slots=True)
class EventRules:
    """The configurable limits of the event contract, one definition for stream and backfill.

    ``max_amount`` bounds amounts so window sums, means, std and EWM stay finite (two
    events of 1e308 overflowed them); it cannot exceed :data:`AMOUNT_LIMIT`.
    """

    max_future_skew_ms: int = 86_400_000
    max_record_bytes: int = 65_536
    max_amount: float = 1e12

    def __post_init__(self) -> None:
        if not 0 < self.max_amount <= AMOUNT_LIMIT:
            raise ValueError(f"max_amount must be in (0, {AMOUNT_LIMIT:g}], got {self.max_amount}")


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Accepted events as columns; ``offset`` is -1 where there is no Kafka source."""

    # a list from the stream's decoder; an Arrow string array from an events file, so a
    # million ids never become Python strings on the way to a parquet file
    event_id: list[str] | pa.Array
    user_id: np.ndarray  # int64
    merchant_id: np.ndarray  # int64
    amount: np.ndarray  # float64
    event_time_ms: np.ndarray  # int64, epoch milliseconds
    partition: np.ndarray  # int32
    offset: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.event_id)

    def arrow_ids(self) -> pa.Array:
        """The event ids as an Arrow string array (no copy when the batch holds one)."""
        return _arrow_ids(self.event_id)

    def ids(self) -> list[str]:
        """The event ids as Python strings, whichever form the batch holds them in."""
        ids = self.event_id
        return ids.to_pylist() if isinstance(ids, pa.Array) else list(ids)

    @staticmethod
    def empty() -> EventBatch:
        """A batch of no events."""
        none = np.empty(0, dtype=np.int64)
        return EventBatch([], none, none, np.empty(0), none, np.empty(0, np.int32), none)

    @staticmethod
    def concat(batches: Sequence[EventBatch]) -> EventBatch:
        """The batches one after the other (the worker merges a fetch's partitions)."""
        ids = [b.event_id for b in batches]
        return EventBatch(
            [i for b in ids for i in b]
            if all(isinstance(b, list) for b in ids)
            else pa.concat_arrays([_arrow_ids(b) for b in ids]),
            np.concatenate([b.user_id for b in batches]),
            np.concatenate([b.merchant_id for b in batches]),
            np.concatenate([b.amount for b in batches]),
            np.concatenate([b.event_time_ms for b in batches]),
            np.concatenate([b.partition for b in batches]),
            np.concatenate([b.offset for b in batches]),
        )

    def take(self, mask: np.ndarray) -> EventBatch:
        """The rows where ``mask`` is true (a boolean or index array)."""
        idx = np.flatnonzero(mask) if mask.dtype == bool else mask
        ids = self.event_id
        return EventBatch(
            ids.take(from_numpy(idx.astype(np.int64)))
            if isinstance(ids, pa.Array)
            else [ids[i] for i in idx],
            self.user_id[idx],
            self.merchant_id[idx],
            self.amount[idx],
            self.event_time_ms[idx],
            self.partition[idx],
            self.offset[idx],
        )


def _arrow_ids(ids: list[str] | pa.Array) -> pa.Array:
    return ids if isinstance(ids, pa.Array) else pa.array(ids, type=pa.string())


def epoch_ms(value: int | datetime) -> int:
    """Milliseconds since the epoch of ``value`` (a datetime, exactly; an int is already ms)."""
    if isinstance(value, int):
        return value
    # Integer timedelta division: exact, unlike datetime.timestamp()'s float.
    return (value - _EPOCH) // _ONE_MS


def judge(exc: Exception) -> tuple[Reason, str]:
    """The dead-letter reason and detail for an exception the decoder raised on one record.

    A record the decoder cannot judge is ``malformed_json``: msgspec raises
    ``RecursionError`` on JSON nested about 1,000 levels deep (2 KB), which once crashed
    the worker on every restart. Anything else unexpected is a ``processing_error``.
    """
    if isinstance(exc, RecursionError):
        return Reason.MALFORMED_JSON, f"nested too deeply to decode ({describe(exc)})"
    if not isinstance(exc, msgspec.MsgspecError):
        return Reason.PROCESSING_ERROR, describe(exc)
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return Reason.MALFORMED_JSON, text
    if text.endswith(("`$.event_time`", "`$.outcome_time`")):
        return Reason.BAD_TIMESTAMP, text
    if "<=" in text or ">=" in text or "out of range" in text:
        return Reason.OUT_OF_RANGE, text
    return Reason.SCHEMA, text


def value_faults(
    amount: np.ndarray, times_ms: np.ndarray, *, now_ms: int, rules: EventRules
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The value rules, column-wise: masks of (bad amount, time before 2000, time too far
    ahead). One definition for the stream's decoder and the columnar file reader
    (``features/event_files.py``), so a row is accepted by both or by neither."""
    bad_amount = ~((amount >= 0) & (amount <= rules.max_amount))  # NaN fails both
    too_old = times_ms < MIN_EVENT_TIME_MS
    in_future = times_ms > now_ms + rules.max_future_skew_ms
    return bad_amount, too_old, in_future


def amount_rule(rules: EventRules) -> str:
    """The dead-letter detail of an amount out of range (one wording for every path)."""
    return f"amount must be finite, >= 0 and <= {rules.max_amount:g}"


def refuse_raw(raw: bytes | None, max_record_bytes: int) -> tuple[Reason, str] | None:
    """Why a record is refused before decoding (a tombstone, or too large), else None: the
    one rule for events, outcomes and predictions."""
    if raw is None:
        return Reason.MALFORMED_JSON, "record has no value (tombstone)"
    if len(raw) > max_record_bytes:
        return Reason.OVERSIZED, f"{len(raw)} bytes > limit {max_record_bytes}"
    return None


def _decode_structure(
    values: Sequence[bytes | None],
    max_record_bytes: int,
    reject: Callable[[int, Reason, str], None],
) -> tuple[list[Event], Sequence[int]]:
    """Decode each record's structure; return the events and their record indices.

    The common case (every record present, in size, and well-formed) is one ``map`` over
    the C decoder, about 100 ns a record cheaper than the loop; any failure redoes the batch
    record by record so that each bad record gets its own reason.
    """
    if None not in values and max(map(len, values), default=0) <= max_record_bytes:
        try:
            return list(map(_decoder.decode, values)), range(len(values))  # type: ignore[arg-type]
        except Exception:  # any record the C decoder refuses or chokes on: judge one by one
            pass
    events: list[Event] = []
    kept: list[int] = []
    for i, raw in enumerate(values):
        refused = refuse_raw(raw, max_record_bytes)
        if refused is not None:
            reject(i, *refused)
        else:
            try:
                events.append(_decoder.decode(raw))
                kept.append(i)
            except Exception as exc:
                reject(i, *judge(exc))
    return events, kept


def decode_events(
    values: Sequence[bytes | None],
    *,
    keys: Sequence[bytes | None] | None = None,
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
    topic: str = "events",
    now_ms: int | None = None,
    rules: EventRules = EventRules(),
) -> tuple[EventBatch, list[DeadLetter]]:
    """Validate raw records; return the accepted batch and the dead letters.

    When ``keys`` is given (records from Kafka) a key must be the decimal
    ``user_id``: a partition owns its users' window state, so a record keyed
    otherwise would be counted in another partition's state.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    n = len(values)
    part = np.full(n, -1, np.int32) if partitions is None else np.asarray(partitions, np.int32)
    off = np.full(n, -1, np.int64) if offsets is None else np.asarray(offsets, np.int64)
    rejected: list[tuple[int, DeadLetter]] = []

    def reject(i: int, reason: Reason, detail: str) -> None:
        key = keys[i] if keys is not None else None
        letter = DeadLetter(reason, detail, values[i], key, topic, int(part[i]), int(off[i]))
        rejected.append((i, letter))

    # Structure record by record (msgspec), then the value rules column-wise (numpy).
    events, kept = _decode_structure(values, rules.max_record_bytes, reject)
    user = np.array([e.user_id for e in events], dtype=np.int64)
    amount = np.array([e.amount for e in events], dtype=np.float64)
    stamps = [e.event_time for e in events]
    try:
        times = np.array(stamps, dtype=np.int64)
    except TypeError:  # RFC 3339 strings among the epoch-ms ints
        times = np.array([epoch_ms(v) for v in stamps], dtype=np.int64)
    bad_amount, too_old, in_future = value_faults(amount, times, now_ms=now_ms, rules=rules)
    bad = bad_amount | too_old | in_future
    if keys is not None:
        kept_keys = keys if len(kept) == n else [keys[i] for i in kept]
        bad |= np.array(
            [k != b"%d" % e.user_id for k, e in zip(kept_keys, events, strict=True)], dtype=bool
        )
    for j in np.flatnonzero(bad).tolist():  # the first rule broken names the reason
        i, t_ms = kept[j], int(times[j])
        if bad_amount[j]:
            reject(i, Reason.OUT_OF_RANGE, f"{amount_rule(rules)}, got {amount[j]}")
        elif too_old[j]:
            reject(i, Reason.TOO_OLD, f"event_time {t_ms} ms is before 2000-01-01")
        elif in_future[j]:
            reject(i, Reason.IN_FUTURE, f"event_time {t_ms} ms is {t_ms - now_ms} ms ahead")
        else:
            reject(i, Reason.BAD_KEY, f"key {keys[i]!r} is not user_id {user[j]}")  # type: ignore[index]

    ok = ~bad
    rows = np.asarray(kept, dtype=np.int64)[ok]
    events_ok = events if len(rows) == len(events) else [events[j] for j in np.flatnonzero(ok)]
    batch = EventBatch(
        [e.event_id for e in events_ok],
        user[ok],
        np.array([e.merchant_id for e in events_ok], dtype=np.int64),
        amount[ok],
        times[ok],
        part[rows],
        off[rows],
    )
    rejected.sort(key=lambda pair: pair[0])
    dead = [letter for _, letter in rejected]
    return batch, dead
