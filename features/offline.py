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


class OfflineWriter:
    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, table: pa.Table, *, tag: str) -> Path | None:
        """Write one part file named after ``tag`` (e.g. partition and offsets)."""
        if table.num_rows == 0:
            return None
        name = f"part-{tag}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.directory / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        final = self.directory / name
        os.replace(tmp, final)
        return final
