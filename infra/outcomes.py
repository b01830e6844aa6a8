"""The ``outcomes`` topic: labels that arrive late, joined to predictions by id.

An outcome is a JSON object::

    {"prediction_id": "9f..", "event_id": "e-1", "user_id": 42, "label": 1,
     "outcome_time": 1767229200000,           # or an RFC 3339 string
     "merchant_id": 7}

``prediction_id`` is optional (labels often come from systems that never saw
the prediction); ``event_id`` always ties the label to its event. ``merchant_id``
(the event's merchant, as a chargeback names it) is optional too: a label that
names it counts in its merchant's fraud rate (``merchant_outcomes``). Bad records
go to ``outcomes.dlq`` with their reason, as for events.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

import msgspec
import pyarrow as pa

from infra.dead_letter import DeadLetter, Reason
from infra.events import MIN_EVENT_TIME_MS, EventRules, Id, Int64, epoch_ms, judge, refuse_raw


class Outcome(msgspec.Struct, frozen=True):
    """One outcome record as producers send it (schema checked by msgspec)."""

    event_id: Id
    user_id: Int64
    label: Literal[0, 1]
    outcome_time: Int64 | Annotated[datetime, msgspec.Meta(tz=True)]
    prediction_id: Id | None = None
    merchant_id: Int64 | None = None


_decoder = msgspec.json.Decoder(Outcome)

OUTCOME_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.int64()),
        ("label", pa.int8()),
        ("outcome_timestamp", pa.timestamp("ms", tz="UTC")),
        ("prediction_id", pa.string()),
        ("merchant_id", pa.int64()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
    ]
)


def _validate(
    raw: bytes | None, now_ms: int, rules: EventRules
) -> tuple[Outcome, int] | tuple[Reason, str]:
    """(outcome, time in ms), or (reason, detail) for a dead letter; never raises."""
    refused = refuse_raw(raw, rules.max_record_bytes)
    if refused is not None:
        return refused
    try:
        outcome = _decoder.decode(raw)
        t_ms = epoch_ms(outcome.outcome_time)
    except Exception as exc:  # RecursionError on deep nesting, not only msgspec's errors
        return judge(exc)
    if t_ms < MIN_EVENT_TIME_MS:
        return Reason.TOO_OLD, f"outcome_time {t_ms} ms is before 2000-01-01"
    if t_ms > now_ms + rules.max_future_skew_ms:
        return Reason.IN_FUTURE, f"outcome_time {t_ms} ms is {t_ms - now_ms} ms ahead"
    return outcome, t_ms


def check_outcomes(
    values: Sequence[bytes | None],
    *,
    partitions: Sequence[int],
    offsets: Sequence[int],
    topic: str = "outcomes",
    now_ms: int | None = None,
    rules: EventRules = EventRules(),
    keys: Sequence[bytes | None] | None = None,
) -> tuple[list[tuple[Outcome, int, int, int]], list[DeadLetter]]:
    """Valid outcomes as ``(outcome, time ms, partition, offset)`` in order, and the dead
    letters (the monitor joins these directly; :func:`decode_outcomes` tabulates them)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    good: list[tuple[Outcome, int, int, int]] = []
    dead: list[DeadLetter] = []
    keys = [None] * len(values) if keys is None else keys  # the dead letter keeps its key
    for raw, key, partition, offset in zip(values, keys, partitions, offsets, strict=True):
        checked = _validate(raw, now_ms, rules)
        if isinstance(checked[0], Reason):
            reason, detail = checked
            dead.append(DeadLetter(reason, str(detail), raw, key, topic, partition, offset))
            continue
        outcome, t_ms = checked
        assert isinstance(outcome, Outcome) and isinstance(t_ms, int)
        good.append((outcome, t_ms, partition, offset))
    return good, dead


def decode_outcomes(
    values: Sequence[bytes | None],
    *,
    partitions: Sequence[int],
    offsets: Sequence[int],
    topic: str = "outcomes",
    now_ms: int | None = None,
    rules: EventRules = EventRules(),
    keys: Sequence[bytes | None] | None = None,
) -> tuple[pa.Table, list[DeadLetter]]:
    """Valid outcomes as an Arrow table (``OUTCOME_SCHEMA``) and the dead letters."""
    good, dead = check_outcomes(
        values,
        partitions=partitions,
        offsets=offsets,
        topic=topic,
        now_ms=now_ms,
        rules=rules,
        keys=keys,
    )
    columns = {
        "event_id": [o.event_id for o, _, _, _ in good],
        "user_id": [o.user_id for o, _, _, _ in good],
        "label": [o.label for o, _, _, _ in good],
        "outcome_timestamp": [t for _, t, _, _ in good],
        "prediction_id": [o.prediction_id for o, _, _, _ in good],
        "merchant_id": [o.merchant_id for o, _, _, _ in good],
        "kafka_partition": [p for _, _, p, _ in good],
        "kafka_offset": [off for _, _, _, off in good],
    }
    return pa.Table.from_pydict(columns, schema=OUTCOME_SCHEMA), dead
