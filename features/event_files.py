"""Historical event files (parquet, CSV, JSON lines) as validated columns for the backfill.

A file row must be accepted or refused exactly as the same event sent to the ``events``
topic would be, with the same dead-letter reason. JSON lines go through the stream's
decoder as they are. Parquet and CSV are checked column-wise (Arrow compute and numpy) on a
fast path that only *accepts*: a row whose every cell has the right type and whose values
pass :func:`infra.events.value_faults` is taken as is. Every other row is turned into the
JSON record a producer would send (:meth:`EventRows.record`) and handed to the stream's
decoder, which either accepts it after all (an RFC 3339 ``event_time`` string, say) or names
the reason. So the decoder stays the one definition of the rules, and clean files skip
building a million JSON records (1M events: 1.46 s from a parquet file to a parquet file,
against 2.02 s from in-memory JSON records, ``benchmarks/backfill_vs_pandas.py``; equality
with the decoder is guarded by ``tests/features/test_event_files.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from infra.arrow import from_numpy, to_numpy
from infra.dead_letter import DeadLetter
from infra.events import (
    EVENT_ID_MAX_CHARS,
    INT64_MAX,
    EventBatch,
    EventRules,
    decode_events,
    value_faults,
)

EVENT_COLUMNS = ("event_id", "user_id", "merchant_id", "amount", "event_time")
SOURCE_TOPIC = "backfill"  # dead letters name the file rows' "topic" and use row numbers

# CSV cells the fast path reads as numbers. At most 18 digits: always inside int64, so the
# cast cannot overflow; longer ones take the decoder's path (which checks the range).
_INT_CELL = r"^-?[0-9]{1,18}$"
_FLOAT_CELL = r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_UNIT_MS = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}

_encoder = msgspec.json.Encoder(enc_hook=str)


@dataclass(frozen=True, slots=True)
class EventRows:
    """A file's rows, validated: accepted rows as columns, refused rows as dead letters.

    ``batch.offset`` and each dead letter's ``offset`` are input row numbers (0-based).
    """

    batch: EventBatch
    rejected: list[DeadLetter]
    record: Callable[[int], bytes]  # input row -> the JSON record a producer would send


def from_records(
    raw: Sequence[bytes],
    *,
    now_ms: int | None = None,
    rules: EventRules = EventRules(),
) -> EventRows:
    """JSON records (JSON lines, or values taken from the topic) through the stream's decoder."""
    batch, dead = decode_events(
        raw,
        partitions=[-1] * len(raw),
        offsets=range(len(raw)),
        topic=SOURCE_TOPIC,
        now_ms=now_ms,
        rules=rules,
    )
    return EventRows(batch, dead, raw.__getitem__)


def read_events(
    path: Path, *, now_ms: int | None = None, rules: EventRules = EventRules()
) -> EventRows:
    """Read and validate an events file (``.parquet``, ``.csv``, ``.jsonl``/``.ndjson``/``.json``).

    Raises ``ValueError`` for an unknown suffix or missing columns (a file-level mistake,
    not a row's); bad rows become dead letters.
    """
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json", ".ndjson"}:
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        return from_records(lines, now_ms=now_ms, rules=rules)
    if suffix == ".parquet":
        names = pq.read_schema(path).names
        _check_columns(path, names)
        # ParquetFile, not read_table: that goes through pyarrow.dataset, which imports
        # pandas (0.35 s of a 10k-row backfill)
        table = pq.ParquetFile(path).read(columns=list(EVENT_COLUMNS))
        cell: Callable[[str, object], object] = _plain
    elif suffix == ".csv":
        # Every column as text: a cell that is not a clean number must not turn its whole
        # column into strings (pandas' inference does), only its own row into a suspect.
        with pa_csv.open_csv(path) as reader:
            _check_columns(path, reader.schema.names)
        options = pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in EVENT_COLUMNS},
            include_columns=list(EVENT_COLUMNS),
            strings_can_be_null=True,
        )
        table = pa_csv.read_csv(path, convert_options=options)
        cell = _csv_cell
    else:
        raise ValueError(f"{path}: unsupported input (use .parquet, .csv or .jsonl)")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return _columnar(table, cell, now_ms=now_ms, rules=rules)


def from_table(table: pa.Table, *, now_ms: int, rules: EventRules = EventRules()) -> EventRows:
    """A parquet file's columns (``EVENT_COLUMNS``, as read) validated as :func:`read_events`
    does: the Spark engine runs it on each task's rows (``features/spark_backfill.py``), so a
    row is refused there exactly as here. Offsets are rows of ``table``."""
    return _columnar(table, _plain, now_ms=now_ms, rules=rules)


def parquet_records(table: pa.Table) -> list[bytes]:
    """Each row of a parquet file's columns as the JSON record a producer would send (what a
    dead letter of that row holds)."""
    return _records(table, _plain, np.arange(table.num_rows))


def _records(
    table: pa.Table, cell: Callable[[str, object], object], rows: np.ndarray
) -> list[bytes]:
    return [
        _encoder.encode({name: cell(name, values[name]) for name in EVENT_COLUMNS})
        for values in table.take(from_numpy(rows.astype(np.int64))).to_pylist()
    ]


def _check_columns(path: Path, names: Sequence[str]) -> None:
    missing = [c for c in EVENT_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")


def _columnar(
    table: pa.Table,
    cell: Callable[[str, object], object],
    *,
    now_ms: int,
    rules: EventRules,
) -> EventRows:
    n = table.num_rows
    ids = table.column("event_id")
    user, user_ok = _int64s(table.column("user_id"))
    merchant, merchant_ok = _int64s(table.column("merchant_id"))
    amount, amount_ok = _float64s(table.column("amount"))
    times, times_ok = _epoch_ms(table.column("event_time"))
    ok = _event_ids_ok(ids) & user_ok & merchant_ok & amount_ok & times_ok
    for fault in value_faults(amount, times, now_ms=now_ms, rules=rules):
        ok &= ~fault

    def records(rows: np.ndarray) -> list[bytes]:
        return _records(table, cell, rows)

    def record(row: int) -> bytes:
        return records(np.array([row]))[0]

    fast = np.flatnonzero(ok)
    batch = EventBatch(
        ids.take(from_numpy(fast)).combine_chunks(),
        user[fast],
        merchant[fast],
        amount[fast],
        times[fast],
        np.full(len(fast), -1, dtype=np.int32),
        fast.astype(np.int64),
    )
    suspects = np.flatnonzero(~ok)
    if not len(suspects):
        return EventRows(batch, [], record)
    decoded, dead = decode_events(
        records(suspects),
        partitions=[-1] * len(suspects),
        offsets=suspects.tolist(),
        topic=SOURCE_TOPIC,
        now_ms=now_ms,
        rules=rules,
    )
    if len(decoded):
        merged = EventBatch.concat([batch, decoded])
        batch = merged.take(np.argsort(merged.offset, kind="stable"))  # back in file order
    assert len(batch) + len(dead) == n, "every row is accepted or dead-lettered"
    return EventRows(batch, dead, record)


def _fill_null(col: pa.ChunkedArray, value: object) -> pa.ChunkedArray:
    """``pc.fill_null``, skipped where there is nothing to fill: its fill scalar imports
    pandas (see infra/arrow.py), and clean files have no nulls."""
    return pc.fill_null(col, value) if col.null_count else col


def _valid(col: pa.ChunkedArray) -> np.ndarray:
    return to_numpy(pc.is_valid(col))


def _event_ids_ok(col: pa.ChunkedArray) -> np.ndarray:
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return np.zeros(len(col), dtype=bool)
    length = to_numpy(_fill_null(pc.utf8_length(col), 0))  # characters, as msgspec counts
    return (length >= 1) & (length <= EVENT_ID_MAX_CHARS)


def _matching(col: pa.ChunkedArray, pattern: str) -> np.ndarray:
    return to_numpy(_fill_null(pc.match_substring_regex(col, pattern), False))


def _int64s(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """int64 values and where they are safe to accept (an integer cell inside int64)."""
    kind = col.type
    if pa.types.is_integer(kind):
        ok = _valid(col)
        filled = _fill_null(col, 0)
        if kind == pa.uint64():
            ok &= to_numpy(pc.less_equal(filled, pa.scalar(INT64_MAX, kind)))
        return to_numpy(pc.cast(filled, pa.int64(), safe=False)), ok
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):  # CSV text
        ok = _matching(col, _INT_CELL)
        text = pc.if_else(pa.array(ok), col, "0")
        return to_numpy(pc.cast(text, pa.int64())), ok
    return np.zeros(len(col), dtype=np.int64), np.zeros(len(col), dtype=bool)


def _float64s(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and where they are safe to accept (a number cell; ints convert as
    JSON ints do)."""
    kind = col.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        ok = _valid(col)
        return to_numpy(pc.cast(_fill_null(col, 0), pa.float64())), ok
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        ok = _matching(col, _FLOAT_CELL)
        text = pc.if_else(pa.array(ok), col, "0")
        return to_numpy(pc.cast(text, pa.float64())), ok
    return np.zeros(len(col)), np.zeros(len(col), dtype=bool)


def _epoch_ms(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch milliseconds and where they are safe to accept: integer cells, and timestamps
    that carry a time zone (a naive one is refused by the decoder, as in JSON)."""
    kind = col.type
    if pa.types.is_timestamp(kind):
        if kind.tz is None:
            return np.zeros(len(col), dtype=np.int64), np.zeros(len(col), dtype=bool)
        ok = _valid(col)
        raw = to_numpy(_fill_null(pc.cast(col, pa.int64()), 0))
        mul, div = _UNIT_MS[kind.unit]
        return raw * mul if div == 1 else raw // div, ok  # floor, as epoch_ms() does
    return _int64s(col)


def _plain(name: str, value: object) -> object:
    """A parquet cell as the JSON value a producer would send; missing as null."""
    if isinstance(value, float) and value != value:  # NaN
        return None
    if isinstance(value, datetime):  # pandas.Timestamp too; naive ones stay naive
        return value.isoformat()
    return value


def _csv_cell(name: str, text: object) -> object:
    """A CSV cell as the JSON value it spells: an integer, a number, or else text
    (``event_id`` is always text)."""
    if not isinstance(text, str) or name == "event_id":
        return text  # text, or null
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if number == number else None
