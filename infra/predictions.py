"""The ``predictions`` topic: what stream scoring and ``/predict`` publish, as the monitor
reads it.

A prediction is a JSON object::

    {"prediction_id": "9f..", "user_id": 42, "score": 0.91, "model_version": "v3",
     "event_id": "e-1", "event_time": 1767229200000, "prediction_time": 1767229200012,
     "features": {"txn_count_5m": 3.0, ...}, "features_found": true, "role": "champion"}

``event_id`` and ``event_time`` come with stream scoring (and with ``/predict`` when the
caller names its event); ``role`` is ``shadow`` for a challenger scored beside the champion.
A prediction needs a time: its event's, else when it was made. Bad records go to
``predictions.dlq`` with their reason, as events and outcomes do; the decoder never raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec

from infra.dead_letter import DeadLetter, Reason
from infra.events import MIN_EVENT_TIME_MS, EventRules, Finite, Id, Int64, judge, refuse_raw


class Prediction(msgspec.Struct, frozen=True):
    """One prediction record (schema checked by msgspec, values by :func:`decode_predictions`)."""

    prediction_id: Id
    user_id: Int64
    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    model_version: Id
    event_id: Id | None = None
    event_time: Int64 | None = None
    prediction_time: Int64 | None = None
    features: dict[str, Finite] = {}
    features_found: bool = True
    role: Literal["champion", "shadow"] = "champion"

    @property
    def time_ms(self) -> int:
        """The scored event's time, else the prediction's (the decoder requires one)."""
        t = self.event_time if self.event_time is not None else self.prediction_time
        assert t is not None
        return t


_decoder = msgspec.json.Decoder(Prediction)


def _validate(raw: bytes | None, rules: EventRules) -> Prediction | tuple[Reason, str]:
    refused = refuse_raw(raw, rules.max_record_bytes)
    if refused is not None:
        return refused
    try:
        p = _decoder.decode(raw)
    except Exception as exc:  # RecursionError on deep nesting, not only msgspec's errors
        return judge(exc)
    if p.event_time is None and p.prediction_time is None:
        return Reason.SCHEMA, "a prediction needs event_time or prediction_time"
    if p.time_ms < MIN_EVENT_TIME_MS:
        return Reason.TOO_OLD, f"time {p.time_ms} ms is before 2000-01-01"
    return p


def decode_predictions(
    values: Sequence[bytes | None],
    *,
    partitions: Sequence[int],
    offsets: Sequence[int],
    topic: str = "predictions",
    rules: EventRules = EventRules(),
    keys: Sequence[bytes | None] | None = None,
) -> tuple[list[Prediction], list[DeadLetter]]:
    """Valid predictions in order, and a dead letter with its reason for every other record.

    >>> ok, dead = decode_predictions(
    ...     [b'{"prediction_id":"p","user_id":1,"score":0.5,"model_version":"v1",'
    ...      b'"event_time":1767225600000}', b'{"prediction_id":"p"}'],
    ...     partitions=[0, 0], offsets=[7, 8])
    >>> [p.score for p in ok], [(d.reason.value, d.offset) for d in dead]
    ([0.5], [('schema', 8)])
    """
    good: list[Prediction] = []
    dead: list[DeadLetter] = []
    keys = [None] * len(values) if keys is None else keys  # the dead letter keeps its key
    for raw, key, partition, offset in zip(values, keys, partitions, offsets, strict=True):
        checked = _validate(raw, rules)
        if isinstance(checked, Prediction):
            good.append(checked)
        else:
            reason, detail = checked
            dead.append(DeadLetter(reason, detail, raw, key, topic, partition, offset))
    return good, dead
