"""Event files are judged exactly as the same events sent to the topic would be.

The oracle is the stream's own decoder fed JSON records that the tests write themselves
from each row's values; the columnar reader must accept the same rows with the same values
and refuse the others with the same reasons, whichever path (columnar or per record) it
takes for a row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.event_files import EVENT_COLUMNS, read_events
from infra.events import decode_events

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
T0 = NOW_MS - 3_600_000
GOOD = {"event_id": "ok", "user_id": 7, "merchant_id": 3, "amount": 12.5, "event_time": T0}


def _variant(i: int, **changes: object) -> dict[str, object]:
    return {**GOOD, "event_id": f"e{i}", "event_time": T0 + i, **changes}


def _assert_same_as_decoder(path: Path, json_records: list[bytes]) -> None:
    got = read_events(path, now_ms=NOW_MS)
    want, want_dead = decode_events(json_records, offsets=range(len(json_records)), now_ms=NOW_MS)
    assert got.batch.offset.tolist() == want.offset.tolist()
    assert got.batch.ids() == want.ids()
    for name in ("user_id", "merchant_id", "amount", "event_time_ms"):
        np.testing.assert_array_equal(getattr(got.batch, name), getattr(want, name), name)
    assert [(d.offset, d.reason) for d in got.rejected] == [(d.offset, d.reason) for d in want_dead]
    # every refused row carries a record that the decoder refuses for the same reason
    for letter in got.rejected:
        _, again = decode_events([letter.value or b""], now_ms=NOW_MS)
        assert [d.reason for d in again] == [letter.reason]


def _typed_rows() -> list[dict[str, object]]:
    rows = [_variant(i) for i in range(5)]
    rows += [
        _variant(10, amount=-1.0),
        _variant(11, amount=float("nan")),
        _variant(12, amount=float("inf")),
        _variant(13, amount=None),
        _variant(14, amount=0.0),
        _variant(15, event_time=5),
        _variant(16, event_time=NOW_MS + 2 * 86_400_000),
        _variant(17, event_time=None),
        _variant(18, user_id=None),
        _variant(19, merchant_id=None),
        _variant(20, event_id=""),
        _variant(21, event_id=None),
        _variant(22, event_id="x" * 257),
        _variant(23, event_id="é" * 256),  # 256 characters, 512 bytes: accepted
        _variant(24, user_id=-(2**63)),
        _variant(25, user_id=2**63 - 1),
    ]
    return rows + [_variant(30 + i, user_id=i) for i in range(5)]


def _json(rows: list[dict[str, object]]) -> list[bytes]:
    # msgspec writes NaN/inf as null: what a missing parquet cell is
    return [msgspec.json.encode(r) for r in rows]


def test_parquet_typed_columns_match_the_decoder(tmp_path: Path) -> None:
    rows = _typed_rows()
    schema = pa.schema(
        [
            ("event_id", pa.string()),
            ("user_id", pa.int64()),
            ("merchant_id", pa.int32()),
            ("amount", pa.float64()),
            ("event_time", pa.int64()),
        ]
    )
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    _assert_same_as_decoder(path, _json(rows))
    assert len(read_events(path, now_ms=NOW_MS).batch) == 14


def test_parquet_integer_amounts_and_extra_columns(tmp_path: Path) -> None:
    rows = [_variant(i, amount=i * 3) for i in range(4)]
    table = pa.Table.from_pylist(rows).append_column("note", pa.array(["x"] * 4))
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    _assert_same_as_decoder(path, _json(rows))
    assert read_events(path, now_ms=NOW_MS).batch.amount.dtype == np.float64


def test_parquet_uint64_beyond_int64_is_out_of_range(tmp_path: Path) -> None:
    rows = [_variant(0, user_id=5), _variant(1, user_id=2**63), _variant(2, user_id=2**64 - 1)]
    schema = pa.schema(
        [
            ("event_id", pa.string()),
            ("user_id", pa.uint64()),
            ("merchant_id", pa.int64()),
            ("amount", pa.float64()),
            ("event_time", pa.int64()),
        ]
    )
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    _assert_same_as_decoder(path, _json(rows))
    assert [d.reason.value for d in read_events(path, now_ms=NOW_MS).rejected] == [
        "out_of_range",
        "out_of_range",
    ]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_parquet_timestamps_with_a_zone(unit: str, tmp_path: Path) -> None:
    ns = [T0 * 1_000_000 + k * 1_234_567_891 for k in range(6)]
    column = pa.array(ns, type=pa.timestamp("ns", tz="UTC")).cast(
        pa.timestamp(unit, tz="UTC"), safe=False
    )
    table = pa.table(
        {
            "event_id": [f"e{k}" for k in range(6)],
            "user_id": [1] * 6,
            "merchant_id": [2] * 6,
            "amount": [1.0] * 6,
            "event_time": column,
        }
    )
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    got = read_events(path, now_ms=NOW_MS)
    factor = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}[unit]
    expected = [(v // factor * factor) // 1_000_000 for v in ns]  # floor to the unit, then ms
    assert got.batch.event_time_ms.tolist() == expected
    assert got.rejected == []


def test_parquet_naive_timestamps_and_iso_strings(tmp_path: Path) -> None:
    naive = pa.table(
        {
            "event_id": ["a", "b"],
            "user_id": [1, 1],
            "merchant_id": [2, 2],
            "amount": [1.0, 2.0],
            "event_time": pa.array([T0, T0 + 1], type=pa.timestamp("ms")),
        }
    )
    path = tmp_path / "naive.parquet"
    pq.write_table(naive, path)
    assert [d.reason.value for d in read_events(path, now_ms=NOW_MS).rejected] == [
        "bad_timestamp",
        "bad_timestamp",
    ]

    stamps = [
        "2025-12-31T23:00:00Z",
        "2025-12-31T23:00:00.5+01:00",
        "not a time",
        "1999-01-01T00:00:00Z",
    ]
    rows = [_variant(i, event_time=s) for i, s in enumerate(stamps)]
    path = tmp_path / "iso.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    _assert_same_as_decoder(path, _json(rows))
    got = read_events(path, now_ms=NOW_MS)
    assert got.batch.event_time_ms.tolist() == [
        int(datetime(2025, 12, 31, 23, tzinfo=UTC).timestamp() * 1000),
        int(datetime(2025, 12, 31, 22, 0, 0, 500_000, tzinfo=UTC).timestamp() * 1000),
    ]


def test_csv_cells_are_judged_one_by_one(tmp_path: Path) -> None:
    # (CSV text of each cell, the JSON value that text spells) per row; a dirty cell refuses
    # only its own row
    cells = [
        ("e0", "1", "2", "3.5", str(T0)),
        ("007", "1", "2", "1e3", str(T0 + 1)),  # event_id stays text; 1e3 is a number
        ("e2", "abc", "2", "1", str(T0 + 2)),
        ("e3", "12.0", "2", "1", str(T0 + 3)),  # a float where an integer belongs
        ("e4", "99999999999999999999", "2", "1", str(T0 + 4)),
        ("e5", "1", "2", "-3", str(T0 + 5)),
        ("e6", "1", "2", "", str(T0 + 6)),
        ("77", "1", "2", "1", "2025-12-31T23:30:00Z"),  # per-record path: id still text
        ("e8", "1", "2", "1", "yesterday"),
        ("", "1", "2", "1", str(T0 + 9)),
        ("e10", "-4", "2", ".25", str(T0 + 10)),
        ("e11", "1234567890123456789", "2", "1", str(T0 + 11)),  # 19 digits, inside int64
    ]
    path = tmp_path / "events.csv"
    path.write_text(",".join(EVENT_COLUMNS) + "\n" + "".join(",".join(r) + "\n" for r in cells))

    def spelled(name: str, text: str) -> object:
        if text == "":
            return None
        if name == "event_id":
            return text
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    records = [
        msgspec.json.encode({n: spelled(n, c) for n, c in zip(EVENT_COLUMNS, r, strict=True)})
        for r in cells
    ]
    _assert_same_as_decoder(path, records)
    got = read_events(path, now_ms=NOW_MS)
    assert got.batch.ids() == ["e0", "007", "77", "e10", "e11"]


def test_file_level_mistakes_raise(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"event_id": ["a"], "user_id": [1]}), path)
    with pytest.raises(ValueError, match="missing columns"):
        read_events(path)
    csv = tmp_path / "events.csv"
    csv.write_text("event_id,user_id\na,1\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_events(csv)
    with pytest.raises(ValueError, match="unsupported input"):
        read_events(tmp_path / "events.xlsx")
