"""`featflow backfill --engine spark` as a user runs it: the same rows and rejects as the
local engine, loaded into the offline store; one-line errors; pyspark never loaded by the
local engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import features.spark_backfill as engine
from featflow.cli import main
from tests.features.test_spark_backfill import messy_events

ROOT = Path(__file__).resolve().parents[2]
EXPIRY_ENV = {  # the expiry's partition clocks in play (tests/features/test_spark_backfill.py)
    "FEATFLOW_MAX_DELAY_S": "7200",
    "FEATFLOW_IDLE_RESET_S": "93600",
    "FEATFLOW_TOPIC_PARTITIONS": "4",
}


def _lines(path: Path) -> list[dict[str, object]]:
    """The rejects' lines; a time in the future is said relative to the run's clock."""
    files = sorted(path.glob("part-*")) if path.is_dir() else [path]
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    future = [r for r in lines if r["reason"] == "timestamp_in_future"]
    assert future and all(" ms ahead" in r.pop("detail") for r in future)
    return lines


def test_spark_cli_equals_the_local_cli(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in EXPIRY_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FEATFLOW_HOME", str(tmp_path / "home"))
    source = tmp_path / "events.parquet"
    pq.write_table(messy_events(6_000, seed=9), source)
    local, spark_out = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    runner = CliRunner()
    args = ["backfill", "--input", str(source)]
    done = runner.invoke(main, [*args, "--output", str(local), "--no-store"])
    assert done.exit_code == 0, done.output
    done = runner.invoke(
        main, [*args, "--output", str(spark_out), "--engine", "spark", "--master", "local[2]"]
    )
    assert done.exit_code == 0, done.output
    assert "rows ->" in done.output and "rejected {" in done.output
    assert "duplicates" in done.output and "loaded into offline store" in done.output

    got = pq.read_table(spark_out).to_pandas().sort_values("kafka_offset", ignore_index=True)
    want = pd.read_parquet(local)
    pd.testing.assert_frame_equal(got[list(want.columns)], want, check_exact=True)
    assert (got["kafka_partition"] == -1).all()
    assert _lines(tmp_path / "spark.rejects.jsonl") == _lines(tmp_path / "local.rejects.jsonl")
    stored = pq.read_table(tmp_path / "home" / "offline" / "user_txn_features")
    assert stored.num_rows == len(want)


def test_spark_cli_errors_are_one_line(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = tmp_path / "events.csv"
    csv.write_text("event_id,user_id,merchant_id,amount,event_time\n")
    pq.write_table(messy_events(100, seed=1), csv.with_suffix(".parquet"))
    runner = CliRunner()
    spark_args = ["--output", str(tmp_path / "o"), "--engine", "spark", "--no-store"]
    done = runner.invoke(main, ["backfill", "--input", str(csv), *spark_args])
    assert done.exit_code == 1 and "reads parquet" in done.output, done.output
    done = runner.invoke(main, ["backfill", "--input", str(tmp_path / "nope"), *spark_args])
    assert done.exit_code == 2 and "does not exist" in done.output, done.output
    done = runner.invoke(main, ["backfill", "--input", str(csv), *spark_args, "--threads", "2"])
    assert done.exit_code == 2 and "--threads" in done.output, done.output
    out = ["--output", str(tmp_path / "o")]
    done = runner.invoke(main, ["backfill", "--input", str(csv), *out, "--master", "local[2]"])
    assert done.exit_code == 2 and "--engine spark" in done.output, done.output
    done = runner.invoke(main, ["backfill", "--input", str(csv), "--output", str(tmp_path)])
    assert done.exit_code == 2 and "is a directory" in done.output, done.output
    s3 = ["--output", "s3a://bucket/out", "--engine", "spark"]
    done = runner.invoke(main, ["backfill", "--input", str(csv.with_suffix(".parquet")), *s3])
    assert done.exit_code == 1 and "--no-store" in done.output, done.output
    done = runner.invoke(main, ["backfill", "--input", "s3a://bucket/events", *spark_args])
    assert done.exit_code == 1 and done.output.startswith("Error: Spark failed:"), done.output
    assert len(done.output.strip().splitlines()) == 1 and "s3a" in done.output, done.output

    from pyspark.sql import SparkSession

    parquet = csv.with_suffix(".parquet")
    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: None))
    monkeypatch.setattr(engine, "java_binary", lambda: None)
    done = runner.invoke(main, ["backfill", "--input", str(parquet), *spark_args])
    assert done.exit_code == 1, done.output
    assert done.output.startswith("Error: --engine spark needs Java 17"), done.output


def test_the_local_engine_does_not_load_pyspark(tmp_path: Path) -> None:
    source = tmp_path / "events.parquet"
    pq.write_table(messy_events(200, seed=2), source)
    args = [
        "backfill",
        "--input",
        str(source),
        "--output",
        str(tmp_path / "o.parquet"),
        "--no-store",
    ]
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from featflow.cli import main\n"
        f"args = {args!r}\n"
        "done = CliRunner().invoke(main, args)\n"
        "assert done.exit_code == 0, done.output\n"
        "assert 'pyspark' not in sys.modules and 'py4j' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
