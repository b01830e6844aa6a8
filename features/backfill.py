"""Batch backfill: the stream's features over a historical events file.

Runs the same decoder and the same kernels, in file order, as the worker does
in offset order, so stream and backfill agree exactly on the same events.
Rows that fail validation (or arrive too late) are reported with their reason
in a rejects file, never dropped silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.rows import offline_table
from features.spec import DEFAULT_FEATURES, FeatureSpec
from features.state import WindowState
from streams.dead_letter import DeadLetter, Reason
from streams.events import decode_events

EVENT_COLUMNS = ("event_id", "user_id", "merchant_id", "amount", "event_time")


@dataclass(frozen=True, slots=True)
class BackfillResult:
    table: pa.Table  # offline schema: kafka_partition = -1, kafka_offset = input row number
    rejected: list[DeadLetter]

    def reasons(self) -> dict[str, int]:
        return dict(Counter(d.reason.value for d in self.rejected))


def read_raw_events(path: Path) -> list[bytes]:
    """Each input row as JSON bytes, so files get exactly the stream's validation."""
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json", ".ndjson"}:
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    if suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif suffix == ".csv":
        frame = pd.read_csv(path, dtype={"event_id": str})
    else:
        raise ValueError(f"{path}: unsupported input (use .parquet, .csv or .jsonl)")
    missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    encoder = msgspec.json.Encoder()
    records = frame[list(EVENT_COLUMNS)].to_dict(orient="records")
    return [encoder.encode({k: _plain(v) for k, v in r.items()}) for r in records]


def _plain(value: object) -> object:
    """numpy/pandas scalars as JSON-native values; missing values as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:  # NaN from a missing cell
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def backfill(
    raw: Sequence[bytes],
    *,
    lateness_ms: int,
    specs: Sequence[FeatureSpec] = DEFAULT_FEATURES,
    now_ms: int | None = None,
    max_future_skew_ms: int = 86_400_000,
) -> BackfillResult:
    """Features for every valid row of ``raw`` (in order)."""
    offsets = np.arange(len(raw), dtype=np.int64)
    batch, dead = decode_events(
        raw,
        partitions=[-1] * len(raw),
        offsets=offsets.tolist(),
        topic="backfill",
        now_ms=now_ms,
        max_future_skew_ms=max_future_skew_ms,
    )
    state = WindowState(specs, lateness_ms=lateness_ms)
    result = state.update(batch.user_id, batch.event_time_ms, batch.amount, batch.merchant_id)
    for i in np.flatnonzero(result.late):
        row = int(batch.offset[i])
        dead.append(
            DeadLetter(
                Reason.LATE, "later than the allowed lateness", raw[row], None, "backfill", -1, row
            )
        )
    ok = ~result.late
    good = batch.take(ok)
    table = offline_table(
        specs,
        event_id=good.event_id,
        user_id=good.user_id,
        event_time_ms=good.event_time_ms,
        features=result.features[ok],
        partition=good.partition,
        offset=good.offset,
    )
    dead.sort(key=lambda d: d.offset)
    return BackfillResult(table, dead)


def write_output(result: BackfillResult, output: Path) -> Path | None:
    """Write the feature rows; rejects (if any) go beside them as JSON lines."""
    columns = [c for c in result.table.column_names if not c.startswith("kafka_")]
    pq.write_table(result.table.select(columns), output)
    if not result.rejected:
        return None
    rejects = output.with_suffix(".rejects.jsonl")
    encoder = msgspec.json.Encoder()
    with open(rejects, "wb") as out:
        for d in result.rejected:
            line = {
                "row": d.offset,
                "reason": d.reason.value,
                "detail": d.detail,
                "record": (d.value or b"").decode("utf-8", "replace"),
            }
            out.write(encoder.encode(line) + b"\n")
    return rejects
