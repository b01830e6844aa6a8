"""Dead letters: records featflow refused, with the reason, never dropped silently.

A dead letter keeps the original key and value bytes untouched (so it can be
replayed after a fix) and carries the reason and its source coordinates in
Kafka headers, the convention Kafka Connect uses for its DLQs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

_SOURCE = ("featflow.source.topic", "featflow.source.partition", "featflow.source.offset")


class Reason(StrEnum):
    """Why a record was refused. Values are stable: dashboards count by them."""

    MALFORMED_JSON = "malformed_json"
    SCHEMA = "schema"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_OLD = "timestamp_before_2000"
    IN_FUTURE = "timestamp_in_future"
    OVERSIZED = "oversized"
    BAD_KEY = "bad_key"
    LATE = "late"
    PROCESSING_ERROR = "processing_error"  # the record made a processing step raise


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused record with its reason, detail and where it came from."""

    reason: Reason
    detail: str
    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int

    @property
    def record_value(self) -> bytes | None:
        """The value to send: the original, except that a record with neither key nor value
        (some clients write one) goes out with an empty value, since Kafka clients refuse
        to send such a record and the refusal would stop the sender."""
        return b"" if self.value is None and self.key is None else self.value

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers that explain this dead letter."""
        return [
            ("featflow.reason", self.reason.value.encode()),
            ("featflow.detail", self.detail.encode()),
            (_SOURCE[0], self.topic.encode()),
            (_SOURCE[1], str(self.partition).encode()),
            (_SOURCE[2], str(self.offset).encode()),
        ]


def source_of(headers: Sequence[tuple[str, bytes]] | None) -> tuple[str, int, int] | None:
    """``(topic, partition, offset)`` of the record a dead letter's ``headers`` name, or None
    for a record featflow did not write.

    >>> letter = DeadLetter(Reason.SCHEMA, "x", b"{}", None, "events", 3, 41)
    >>> source_of(letter.headers())
    ('events', 3, 41)
    """
    found = {k: v for k, v in headers or () if k in _SOURCE}
    try:
        return found[_SOURCE[0]].decode(), int(found[_SOURCE[1]]), int(found[_SOURCE[2]])
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
