"""The ``retrain`` topic: retraining requests, as the trainer reads them.

The monitor publishes one when its policy fires; an operator may publish one by hand::

    {"request_id": "4be1..", "time_ms": 1767229200000, "model_version": "v0001",
     "event_time_ms": 1767229195000,
     "reason": "psi(amount_mean_1h) = 0.41 breached psi(*) > 0.25 for 3 snapshots",
     "values": {"psi(amount_mean_1h)": 0.41}}

``event_time_ms`` is the newest scored event's time when the policy fired: the trainer
can wait for labels of events after it, so a challenger learns the world as it is now.
``request_id`` names the request in every decision the trainer records about it, which is
what keeps a restarted trainer from acting on one request twice. Bad records go to
``retrain.dlq`` with their reason; the decoder never raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec

from infra.dead_letter import DeadLetter, Reason
from infra.events import MIN_EVENT_TIME_MS, EventRules, Finite, Id, Int64, judge, refuse_raw


class RetrainRequest(msgspec.Struct, frozen=True):
    """One retraining request (schema checked by msgspec)."""

    request_id: Id
    time_ms: Int64
    model_version: Id | None = None  # the champion the request is about
    event_time_ms: Int64 | None = None  # the newest scored event's time at the firing
    reason: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    values: dict[Annotated[str, msgspec.Meta(max_length=256)], Finite] = {}


_decoder = msgspec.json.Decoder(RetrainRequest)


def _validate(raw: bytes | None, rules: EventRules) -> RetrainRequest | tuple[Reason, str]:
    refused = refuse_raw(raw, rules.max_record_bytes)
    if refused is not None:
        return refused
    try:
        request = _decoder.decode(raw)
    except Exception as exc:  # RecursionError on deep nesting, not only msgspec's errors
        return judge(exc)
    if request.time_ms < MIN_EVENT_TIME_MS:
        return Reason.TOO_OLD, f"time {request.time_ms} ms is before 2000-01-01"
    return request


def decode_requests(
    values: Sequence[bytes | None],
    *,
    partitions: Sequence[int],
    offsets: Sequence[int],
    topic: str = "retrain",
    rules: EventRules = EventRules(),
    keys: Sequence[bytes | None] | None = None,
) -> tuple[list[RetrainRequest], list[DeadLetter]]:
    """Valid requests in order, and a dead letter with its reason for every other record.

    >>> ok, dead = decode_requests(
    ...     [b'{"request_id":"r1","time_ms":1767225600000}', b'{"time_ms":1}'],
    ...     partitions=[0, 0], offsets=[3, 4])
    >>> [r.request_id for r in ok], [(d.reason.value, d.offset) for d in dead]
    (['r1'], [('schema', 4)])
    """
    good: list[RetrainRequest] = []
    dead: list[DeadLetter] = []
    keys = [None] * len(values) if keys is None else keys  # the dead letter keeps its key
    for raw, key, partition, offset in zip(values, keys, partitions, offsets, strict=True):
        checked = _validate(raw, rules)
        if isinstance(checked, RetrainRequest):
            good.append(checked)
        else:
            reason, detail = checked
            dead.append(DeadLetter(reason, detail, raw, key, topic, partition, offset))
    return good, dead
