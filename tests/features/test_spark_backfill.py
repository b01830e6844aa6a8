"""``--engine spark`` (``features/spark_backfill.py``) equals the single-process backfill row
for row, rejects and duplicates included, on heavy-tailed messy data, with and without the
expiry's partition clocks; one ``local[2]`` session for the suite (``tests/conftest.py``)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.backfill import BackfillResult, backfill
from features.event_files import read_events
from features.spark_backfill import (
    SparkUnavailable,
    rejects_path,
    session_conf,
    spark_backfill,
    spark_session,
)
from features.spec import NO_EXPIRY, Expiry
from streams.generator import generate_events

HOUR_MS = 3_600_000
LATENESS_MS = 60_000
EXPIRY = Expiry(idle_ms=26 * HOUR_MS, max_delay_ms=2 * HOUR_MS)  # idle: > 24 h window
PARTITIONS = 4
START_MS = 1_767_225_600_000  # 2026-01-01


def messy_events(n: int, seed: int) -> pa.Table:
    """An events file as a user brings one: Zipf(1.6) users over 5 days (idle gaps past
    ``EXPIRY.idle_ms``), times tied to the second for half the rows, bursts of one user,
    rows late for their user (past the lateness) and far behind their partition (past
    ``max_delay_ms``), copies of events (retries: duplicates; much later: late), and a few
    malformed rows (nulls, NaN, negative amounts, empty ids, times before 2000 and in the
    future)."""
    rng = np.random.default_rng(seed)
    ev = generate_events(n, users=max(n // 20, 10), start_ms=START_MS,
                         mean_gap_ms=5 * 24 * HOUR_MS / n, seed=seed, zipf=1.6)  # fmt: skip
    users, times = ev.user_id.copy(), ev.event_time_ms.copy()
    amounts, merchants, ids = ev.amount.copy(), ev.merchant_id.copy(), list(ev.event_id)
    tied = rng.random(n) < 0.5
    times[tied] = times[tied] // 1000 * 1000
    for anchor in rng.choice(n - 20, 40, replace=False).tolist():  # bursts: 100 ms apart
        users[anchor + 1 : anchor + 10] = users[anchor]
        times[anchor + 1 : anchor + 10] = times[anchor] + 100 * np.arange(1, 10)
    late = rng.random(n) < 0.05
    times[late] -= rng.integers(0, 3 * LATENESS_MS, late.sum())
    far = rng.random(n) < 0.01
    times[far] -= rng.integers(EXPIRY.max_delay_ms or 0, 3 * (EXPIRY.max_delay_ms or 0), far.sum())
    order = list(range(n))
    for i in rng.choice(n, n // 100, replace=False).tolist():  # retries, and copies much later
        at = order.index(i) + (int(rng.integers(1, 30)) if rng.random() < 0.8 else n // 3)
        order.insert(min(at, len(order)), i)
    idx = np.array(order)
    m = len(idx)
    table = {
        "event_id": pa.array([ids[i] for i in idx], pa.string()),
        "user_id": pa.array(users[idx], pa.int64()),
        "merchant_id": pa.array(merchants[idx], pa.int64()),
        "amount": pa.array(amounts[idx], pa.float64()),
        "event_time": pa.array(times[idx], pa.int64()),
    }
    columns = {k: v.to_pylist() for k, v in table.items()}
    bad = rng.choice(m, 12, replace=False).tolist()
    columns["user_id"][bad[0]] = None
    columns["amount"][bad[1]] = -5.0
    columns["amount"][bad[2]] = float("nan")
    columns["amount"][bad[3]] = None
    columns["event_id"][bad[4]] = ""
    columns["event_time"][bad[5]] = 5
    columns["event_time"][bad[6]] = int(time.time() * 1000) + 30 * 24 * HOUR_MS
    columns["event_time"][bad[7]] = None
    columns["merchant_id"][bad[8]] = None
    return pa.table({k: pa.array(v, table[k].type) for k, v in columns.items()})


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spark-events") / "events.parquet"
    pq.write_table(messy_events(30_000, seed=4), path, row_group_size=4_000)
    return path


def _local(path: Path, expiry: Expiry, now_ms: int) -> BackfillResult:
    rows = read_events(path, now_ms=now_ms)
    return backfill(rows, lateness_ms=LATENESS_MS, threads=2, expiry=expiry, partitions=PARTITIONS)


def _letters(result: BackfillResult) -> list[dict[str, object]]:
    return [
        {"row": d.offset, "reason": d.reason.value, "detail": d.detail,
         "record": json.loads((d.value or b"").decode())}
        for d in result.rejected
    ]  # fmt: skip


def _spark_letters(folder: str) -> list[dict[str, object]]:
    lines = [ln for p in sorted(Path(folder).glob("part-*")) for ln in p.read_text().splitlines()]
    return [dict(r, record=json.loads(r["record"])) for r in map(json.loads, lines)]


def assert_same_rows(spark_output: Path, local: BackfillResult) -> None:
    """The Spark output's rows, in input order, equal the local table's, column for column."""
    got = pq.read_table(spark_output).to_pandas().sort_values("kafka_offset", ignore_index=True)
    want = local.table.to_pandas()
    pd.testing.assert_frame_equal(got, want, check_exact=True)


@pytest.mark.parametrize("expiry", [NO_EXPIRY, EXPIRY], ids=["no-expiry", "expiry"])
def test_spark_equals_the_local_backfill(spark, messy: Path, tmp_path: Path, expiry: Expiry
                                         ) -> None:  # fmt: skip
    now_ms = int(time.time() * 1000)
    local = _local(messy, expiry, now_ms)
    reasons = local.reasons()
    # the data reaches every verdict the equality must hold for
    assert local.duplicates > 50 and reasons["late"] > 500, reasons
    assert {"schema", "out_of_range", "timestamp_before_2000", "timestamp_in_future"} <= set(
        reasons
    ), reasons
    behind = [d for d in local.rejected if "partition's newest" in d.detail]
    assert (len(behind) > 50) == (expiry is EXPIRY), len(behind)

    output = tmp_path / "features.parquet"
    outcome = spark_backfill(spark, str(messy), str(output), lateness_ms=LATENESS_MS,
                             expiry=expiry, partitions=PARTITIONS, now_ms=now_ms)  # fmt: skip
    assert_same_rows(output, local)
    assert (outcome.rows, outcome.duplicates) == (local.table.num_rows, local.duplicates)
    assert outcome.rejected == dict(sorted(reasons.items()))
    assert outcome.rejects_path == str(tmp_path / "features.rejects.jsonl")
    assert _spark_letters(outcome.rejects_path) == _letters(local)


def test_the_partition_clock_changes_rows(messy: Path) -> None:
    """So the equality above can fail: clocks over another partition count (users sharing
    a partition differently) change which rows are late, and so the rows."""
    now_ms = int(time.time() * 1000)
    rows = read_events(messy, now_ms=now_ms)
    four = backfill(rows, lateness_ms=LATENESS_MS, expiry=EXPIRY, partitions=PARTITIONS)
    one = backfill(rows, lateness_ms=LATENESS_MS, expiry=EXPIRY, partitions=1)
    assert four.reasons()["late"] != one.reasons()["late"]
    assert not four.table.equals(one.table)


def test_a_folder_of_files_is_read_in_path_order(spark, messy: Path, tmp_path: Path) -> None:
    """Several input files: rows numbered through them in path order (each file's
    ``row_index`` after the rows of the files before it)."""
    table = pq.read_table(messy)
    folder = tmp_path / "events"
    folder.mkdir()
    cuts = [0, 7_000, 7_001, 19_000, table.num_rows]  # one file of one row
    for k, (a, b) in enumerate(itertools.pairwise(cuts)):
        pq.write_table(table.slice(a, b - a), folder / f"part-{k:02d}.parquet")
    now_ms = int(time.time() * 1000)
    local = _local(messy, EXPIRY, now_ms)
    output = tmp_path / "out"
    spark_backfill(spark, str(folder), str(output), lateness_ms=LATENESS_MS, expiry=EXPIRY,
                   partitions=PARTITIONS, now_ms=now_ms)  # fmt: skip
    assert_same_rows(output, local)
    assert _spark_letters(str(tmp_path / "out.rejects.jsonl")) == _letters(local)


def test_missing_columns_are_refused(spark, tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(pa.table({"event_id": ["a"], "user_id": [1]}), path)
    with pytest.raises(ValueError, match="missing columns"):
        spark_backfill(spark, str(path), str(tmp_path / "out"), lateness_ms=LATENESS_MS)


def test_missing_pyspark_or_java_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import features.spark_backfill as engine

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyspark" else find_spec(name)
    )
    with pytest.raises(SparkUnavailable, match=r"pip install 'featflow\[spark\]'"), spark_session():
        pass
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    from pyspark.sql import SparkSession

    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: None))
    monkeypatch.setattr(engine, "java_binary", lambda: None)
    with pytest.raises(SparkUnavailable, match="Java 17"), spark_session("local[1]"):
        pass


def test_settings_and_paths() -> None:
    local = session_conf("local[2]", {"spark.sql.shuffle.partitions": "7"})
    assert local["spark.ui.enabled"] == "false"
    assert local["spark.driver.bindAddress"] == local["spark.driver.host"] == "127.0.0.1"
    assert local["spark.sql.shuffle.partitions"] == "7"
    assert session_conf("local[3]")["spark.sql.shuffle.partitions"] == "6"
    cluster = session_conf("spark://head:7077")
    assert "spark.driver.host" not in cluster and "spark.sql.shuffle.partitions" not in cluster
    assert rejects_path("s3a://b/out/features.parquet/") == "s3a://b/out/features.rejects.jsonl"
    assert rejects_path("/data/out") == "/data/out.rejects.jsonl"


@pytest.mark.parametrize("kind", ["utc-timestamp", "naive-timestamp", "narrow-numbers"])
def test_column_types_read_by_spark_judge_rows_alike(spark, tmp_path: Path, kind: str) -> None:
    """Spark reads parquet types its own way (timestamps as UTC microseconds, a naive one as
    TIMESTAMP_NTZ, int32 and float32 widened by the reader); validation in the executors
    still accepts and refuses each row as the local reader does, with the same records."""
    table = messy_events(2_000, seed=3)
    if kind == "narrow-numbers":
        table = table.set_column(1, "user_id", pc.cast(table["user_id"], pa.int32(), safe=False))
        table = table.set_column(3, "amount", pc.cast(table["amount"], pa.float32()))
    else:
        zone = "UTC" if kind == "utc-timestamp" else None
        table = table.set_column(4, "event_time", pc.cast(table["event_time"],
                                                          pa.timestamp("ms", tz=zone)))  # fmt: skip
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    now_ms = int(time.time() * 1000)
    local = backfill(read_events(path, now_ms=now_ms), lateness_ms=LATENESS_MS)
    assert (local.table.num_rows == 0) == (kind == "naive-timestamp")
    spark_backfill(spark, str(path), str(tmp_path / "out"), lateness_ms=LATENESS_MS,
                   now_ms=now_ms)  # fmt: skip
    assert_same_rows(tmp_path / "out", local)
    assert _spark_letters(str(tmp_path / "out.rejects.jsonl")) == _letters(local)
