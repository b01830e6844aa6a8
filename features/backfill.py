"""Batch backfill: the stream's features over a historical events file.

Runs the same validation rules (``features/event_files.py``) and the same kernels, in
file order, as the worker does in offset order, so stream and backfill agree exactly on
the same events. Rows that fail validation (or arrive too late) are reported with their
reason in a rejects file, never dropped silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.apply import Applied, Columns, apply_events
from features.event_files import SOURCE_TOPIC, EventRows
from features.offline import PARQUET_OPTIONS
from features.rows import offline_table
from features.shards import balanced_shards
from features.spec import DEFAULT_FEATURES, NO_EXPIRY, Expiry, FeatureSpec
from features.state import WindowState
from infra.dead_letter import DeadLetter
from infra.partitioner import partition_clocks, partition_of


@dataclass(frozen=True, slots=True)
class BackfillResult:
    """Features of the accepted rows and the refused ones with their reasons."""

    table: pa.Table  # offline schema: kafka_partition = -1, kafka_offset = input row number
    rejected: list[DeadLetter]
    duplicates: int = 0  # rows copying an event their user holds (same event_id): no row

    def reasons(self) -> dict[str, int]:
        """Refused rows per reason."""
        return dict(Counter(d.reason.value for d in self.rejected))


def backfill(
    rows: EventRows,
    *,
    lateness_ms: int,
    specs: Sequence[FeatureSpec] = DEFAULT_FEATURES,
    threads: int = 1,
    expiry: Expiry = NO_EXPIRY,
    partitions: int = 1,
) -> BackfillResult:
    """Features for every accepted row of ``rows`` (in input order); late rows join the
    rejects.

    With ``threads > 1`` the users are split into that many shards of near-equal rows
    (``features/shards.py``), each run by its own state in its own thread: the same rows,
    since every feature is per user. With an ``expiry``, each event's partition clock is
    that of the partition of ``partitions`` its user's records land on (the stream's topic
    must have that many), as in the stream.
    """
    batch, dead = rows.batch, list(rows.rejected)
    shards = balanced_shards(batch.user_id, threads)
    cols = Columns.of(batch)
    if expiry.max_delay_ms is not None:
        home = partition_of(batch.user_id, partitions)
        cols = cols._replace(clock=partition_clocks(home, batch.event_time_ms))

    def run(part: Columns) -> Applied:
        return apply_events(WindowState(specs, lateness_ms=lateness_ms, expiry=expiry), part)

    if len(shards) == 1:
        applied = run(cols)
    else:
        with ThreadPoolExecutor(len(shards), thread_name_prefix="backfill") as pool:
            parts = list(pool.map(run, (cols.take(taken) for taken in shards)))
        applied = Applied.merge(list(zip(shards, parts, strict=True)))
    for i, reason, detail in applied.refused:
        row = int(batch.offset[i])
        dead.append(DeadLetter(reason, detail, rows.record(row), None, SOURCE_TOPIC, -1, row))
    good = batch if len(applied.rows) == len(batch) else batch.take(applied.rows)
    features = applied.features
    table = offline_table(
        specs,
        event_id=good.event_id,
        entity_id=good.user_id,
        event_time_ms=good.event_time_ms,
        features=features,
        partition=good.partition,
        offset=good.offset,
    )
    dead.sort(key=lambda d: d.offset)
    return BackfillResult(table, dead, len(applied.duplicates))


def load_kernels() -> None:
    """Load the kernels a backfill runs from Numba's disk cache (0.3-0.5 s), by one update
    of one event. Run in a thread while the events file is read: pyarrow's reading
    releases the GIL, so the two overlap."""
    state = WindowState(DEFAULT_FEATURES, lateness_ms=0)
    one = np.ones(1, dtype=np.int64)
    state.update(one, one, np.ones(1), one)


def write_output(result: BackfillResult, output: Path) -> Path | None:
    """Write the feature rows; rejects (if any) go beside them as JSON lines."""
    columns = [c for c in result.table.column_names if not c.startswith("kafka_")]
    pq.write_table(result.table.select(columns), output, **PARQUET_OPTIONS)
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
