"""Offline store writer: immutable parquet part files in one directory.

Feast's own file write path rewrites the whole parquet file on every call;
appending part files to a directory that the Feast ``FileSource`` reads keeps
each write proportional to the batch. Files appear atomically (written under a
dot-name, which readers ignore, then renamed). Rows carry ``kafka_partition``
and ``kafka_offset`` so replayed duplicates can be dropped by readers.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Feature rows are mostly unique values (event ids, float features): dictionary encoding
# only costs time there, and its pages come out larger. Without it, snappy writes a stream
# part file in about half the time of zstd with dictionaries (0.44 vs 0.79 us per row at
# 8k rows) for 13% more bytes; measured with pyarrow on the stream benchmark's rows.
PARQUET_OPTIONS: dict[str, object] = {"compression": "snappy", "use_dictionary": False}


class OfflineWriter:
    """Writes feature rows as parquet part files under one folder (Feast's file offline store)."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, table: pa.Table, *, tag: str) -> Path | None:
        """Write one part file named after ``tag`` (e.g. partition and offsets)."""
        if table.num_rows == 0:
            return None
        name = f"part-{tag}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.directory / f".{name}.tmp"
        pq.write_table(table, tmp, **PARQUET_OPTIONS)
        final = self.directory / name
        os.replace(tmp, final)
        return final
