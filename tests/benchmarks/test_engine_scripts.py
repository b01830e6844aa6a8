"""The DuckDB and Polars backfill scripts equal featflow's backfill, ties included.

``benchmarks/backfill_vs_engines.py`` checks this on its own data before it times anything;
this keeps the scripts honest without running the benchmark: a small Zipf stream whose
times are floored to 10 s, so many rows share their user's time (the tie rule: a row's
window holds the equal-time rows that arrived before it, not those after).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks import engine_duckdb, engine_polars
from benchmarks._common import ENGINE_FEATURES
from benchmarks.backfill_vs_engines import RTOL, compare, write_events
from features.backfill import backfill, write_output
from features.event_files import read_events
from features.spec import DAY_MS, DEFAULT_LATENESS_MS, spec_fingerprint
from streams.generator import generate_events

START_MS = 1_767_225_600_000


@pytest.fixture(scope="module")
def tied_events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An events file with many ties and featflow's features for it."""
    tmp = tmp_path_factory.mktemp("engines")
    ev = generate_events(3000, users=30, start_ms=START_MS, mean_gap_ms=DAY_MS / 3000, zipf=1.5)
    times = ev.event_time_ms // 10_000 * 10_000
    source = write_events(ev, tmp / "events.parquet", times=times)
    assert len(set(zip(ev.user_id.tolist(), times.tolist(), strict=True))) < 2900  # >100 tied
    result = backfill(
        read_events(source, now_ms=int(times.max()) + 1), lateness_ms=DEFAULT_LATENESS_MS
    )
    assert not result.rejected
    write_output(result, tmp / "featflow.parquet")
    return source, tmp / "featflow.parquet"


@pytest.mark.parametrize("engine", [engine_duckdb, engine_polars], ids=["duckdb", "polars"])
def test_engine_equals_featflow(
    engine: ModuleType, tied_events: tuple[Path, Path], tmp_path: Path
) -> None:
    source, reference = tied_events
    output = tmp_path / "out.parquet"
    engine.main([str(source), str(output), json.dumps(spec_fingerprint(ENGINE_FEATURES))])
    assert pq.read_metadata(output).num_rows == pq.read_metadata(reference).num_rows
    diffs = compare(reference, output)
    assert [(name, bad) for name, bad, _ in diffs if bad] == [], f"rtol {RTOL}"
    assert np.isfinite([worst for _, _, worst in diffs]).all()
