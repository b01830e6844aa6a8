"""The ``merchant_rows`` topic: accepted events and labels re-keyed by merchant.

A merchant's events are spread over every user partition, so merchant features need the
rows moved to the partition that owns the merchant (a repartition, as Kafka Streams does
through its ``-repartition`` topics). The user workers write them: per fetch, one record
per merchant partition holding every row bound there, as an Arrow IPC stream, so the
shuffle costs a few records per fetch rather than one per event. Merchant ``m`` lives on
partition ``m mod P``. The topic is featflow's own; nothing else needs to read it.

Each row keeps its source coordinates (topic code, partition, offset): a user partition
replayed after a crash writes its rows again, and the merchant worker skips every row at
or below the newest source offset it holds for that source partition, so a row counts
once however often it is written.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from infra.arrow import from_numpy

#: ``source`` codes: a row from the events topic (a transaction) or the outcomes topic.
EVENTS, OUTCOMES = 0, 1

SCHEMA = pa.schema(
    [
        ("source", pa.int8()),
        ("source_partition", pa.int32()),
        ("source_offset", pa.int64()),
        ("merchant_id", pa.int64()),
        ("user_id", pa.int64()),
        ("time_ms", pa.int64()),  # event_time, or a label's outcome_time
        ("value", pa.float64()),  # the amount, or the label (1 = fraud)
        ("event_id", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class MerchantRows:
    """Rows bound for merchant partitions, as columns (one source each, or mixed)."""

    source: np.ndarray  # int8: EVENTS or OUTCOMES
    source_partition: np.ndarray  # int32
    source_offset: np.ndarray  # int64
    merchant_id: np.ndarray  # int64
    user_id: np.ndarray  # int64
    time_ms: np.ndarray  # int64
    value: np.ndarray  # float64
    event_id: pa.Array  # string

    def __len__(self) -> int:
        return len(self.merchant_id)

    def take(self, rows: np.ndarray) -> MerchantRows:
        """The rows at ``rows`` (indices or a mask), in that order."""
        idx = np.flatnonzero(rows) if rows.dtype == np.bool_ else rows
        return MerchantRows(
            self.source[idx],
            self.source_partition[idx],
            self.source_offset[idx],
            self.merchant_id[idx],
            self.user_id[idx],
            self.time_ms[idx],
            self.value[idx],
            self.event_id.take(pa.array(idx, type=pa.int64())),
        )

    @staticmethod
    def concat(parts: Sequence[MerchantRows]) -> MerchantRows:
        """The parts one after the other."""
        if not parts:
            return empty()
        return MerchantRows(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in _NUMERIC),
            pa.concat_arrays([p.event_id for p in parts]),
        )

    def encode(self) -> bytes:
        """One Kafka record value: an Arrow IPC stream of the rows."""
        table = pa.table(
            [
                pa.array(self.source.astype(np.int8, copy=False)),
                from_numpy(self.source_partition.astype(np.int32, copy=False)),
                from_numpy(self.source_offset.astype(np.int64, copy=False)),
                from_numpy(self.merchant_id.astype(np.int64, copy=False)),
                from_numpy(self.user_id.astype(np.int64, copy=False)),
                from_numpy(self.time_ms.astype(np.int64, copy=False)),
                from_numpy(self.value.astype(np.float64, copy=False)),
                self.event_id,
            ],
            schema=SCHEMA,
        )
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, SCHEMA) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()


_NUMERIC = (
    "source",
    "source_partition",
    "source_offset",
    "merchant_id",
    "user_id",
    "time_ms",
    "value",
)


def empty() -> MerchantRows:
    """No rows."""
    i64 = np.empty(0, np.int64)
    return MerchantRows(
        np.empty(0, np.int8), np.empty(0, np.int32), i64, i64, i64, i64, np.empty(0),
        pa.array([], pa.string()),
    )  # fmt: skip


def decode(value: bytes | None) -> MerchantRows:
    """The rows of one record; ``ValueError`` saying why for anything featflow did not write
    (wrong schema, corrupt bytes, null cells, an unknown source code)."""
    if not value:
        raise ValueError("empty record")
    try:
        table = pa.ipc.open_stream(pa.py_buffer(value)).read_all()
    except Exception as exc:  # ArrowInvalid and friends, on any foreign bytes
        raise ValueError(f"not an Arrow IPC stream: {exc}") from exc
    if not table.schema.equals(SCHEMA):
        raise ValueError(f"schema {table.schema.names} is not the merchant_rows schema")
    if any(column.null_count for column in table.columns):
        raise ValueError("null cells")
    cols = {name: table.column(name).to_numpy() for name in _NUMERIC}
    source = cols["source"]
    if len(source) and (source.min() < EVENTS or source.max() > OUTCOMES):
        raise ValueError("unknown source code")
    if not np.isfinite(cols["value"]).all():
        raise ValueError("non-finite value")
    ids = table.column("event_id").combine_chunks()
    return MerchantRows(**cols, event_id=ids)


def by_partition(rows: MerchantRows, partitions: int) -> dict[int, MerchantRows]:
    """The rows bound for each merchant partition (``merchant_id mod partitions``), each part
    in the order of ``rows``."""
    target = np.mod(rows.merchant_id, partitions)
    order = np.argsort(target, kind="stable")
    bounds = np.searchsorted(target[order], np.arange(partitions + 1))
    return {
        p: rows.take(order[lo:hi])
        for p, (lo, hi) in enumerate(itertools.pairwise(bounds))
        if hi > lo
    }
