"""Backfill, whole process: `featflow backfill` vs `featflow backfill --engine spark`.

Each side is the command a user runs, timed from spawn to exit (interpreter, JVM and Python
workers' start-up, parquet read, features, parquet write), with its peak memory (the RSS of
its process tree): the local engine on every core
(`--threads` default) against Spark on ``--master`` (default ``local[2]``: the same two
cores). Sizes run interleaved, the order rotated per repeat; ratios come from the same run.
Before any figure counts, Spark's rows must equal the local engine's at every size (sorted
by input row: every column, exactly), else it stops.

From the smallest and largest sizes' best times (at least 100 x apart) each engine gets a
fixed cost and a per-event cost (a line through them); the crossover is where Spark's line
would pass under the local one, if its per-event cost is lower: an extrapolation, printed
beside what was measured. On one machine it is not: Spark runs the same kernels after
a JVM start, a shuffle by user (and a window pass for the expiry's clocks) and Arrow
transfers to Python workers. Spark is for data past one machine: a cluster's executors.

    python -m benchmarks.spark_backfill [--sizes 10000 1000000 10000000] [--repeats 2]
        [--master local[2]] [--driver-memory 2g] [--zipf 1.5] [--days 30]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from benchmarks._common import describe_activity, header, table, zipf_events
from benchmarks.backfill_vs_engines import featflow_cmd, featflow_env
from features.spec import DAY_MS

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ENGINES = ("local", "spark")


def command(engine: str, source: Path, output: Path, args: argparse.Namespace) -> list[str]:
    io = ["--input", str(source), "--output", str(output), "--no-store"]
    if engine == "local":
        return [*featflow_cmd(), "backfill", *io]
    conf = ["--spark-conf", f"spark.driver.memory={args.driver_memory}"]
    return [*featflow_cmd(), "backfill", *io, "--engine", "spark", "--master", args.master, *conf]


def run_measured(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS of the process tree in bytes: Spark's JVM and Python workers
    included), sampled every 0.2 s; raises with the end of its output if it fails."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
        if proc.returncode:
            log.seek(0)
            raise RuntimeError(
                f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{log.read()[-3000:]}"
            )
    return elapsed, peak


def same_rows(local: Path, spark: Path) -> None:
    """Spark's rows in input order equal the local file's, every column, exactly."""
    want = pq.read_table(local)
    got = pq.read_table(spark).sort_by("kafka_offset").select(want.column_names)
    if not got.cast(want.schema).equals(want):
        raise AssertionError(f"{spark.name}: Spark's rows differ from the local engine's")


def line(sizes: list[int], best: dict[int, float]) -> tuple[float, float]:
    """(fixed s, per-event s): the line through the smallest and largest sizes' best times."""
    a, b = min(sizes), max(sizes)
    slope = (best[b] - best[a]) / (b - a)
    return best[a] - slope * a, slope


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per engine and size")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="2g", help="spark.driver.memory (local)")
    parser.add_argument("--users-per-event", type=float, default=0.1, help="users = n * this")
    parser.add_argument("--days", type=float, default=30.0, help="event-time span of the data")
    parser.add_argument("--zipf", type=float, default=1.5, help="user activity exponent")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = sorted(args.sizes)
    span_ms = args.days * DAY_MS
    header(
        "spark_backfill: featflow backfill, local engine vs --engine spark, whole processes",
        f"""
data: generate_events(n, users = {args.users_per_event:g} n, {args.days:g} days, zipf
  {args.zipf:g}, in order) for n in {sizes}, one events parquet file per size
local: featflow backfill --input events.parquet --output features.parquet --no-store
  (one thread per core)
spark: the same with --engine spark --master {args.master} --spark-conf
  spark.driver.memory={args.driver_memory} (output: a folder of part files)
settings: defaults (expiry on: FEATFLOW_MAX_DELAY_S 7 days, so Spark runs the clock
  window; FEATFLOW_TOPIC_PARTITIONS 8)
wall time and peak RSS (the process tree: JVM and Python workers too, sampled every
  0.2 s) of each whole process; engines interleaved, order rotated per repeat,
  {args.repeats} runs per engine and size; best and median
agreement: at every size Spark's rows, sorted by input row, equal the local file's exactly""",
    )
    with tempfile.TemporaryDirectory(prefix="featflow-bench-spark-") as tmp:
        scratch = Path(tmp)
        files: dict[int, Path] = {}
        for n in sizes:
            ev = zipf_events(n, args, start_ms=START_MS, span_ms=span_ms)
            files[n] = scratch / f"events-{n}.parquet"
            pq.write_table(ev.table(), files[n])
            print(f"{n:,} events: {describe_activity(ev, span_ms)}", flush=True)
            del ev
        env = featflow_env()
        times: dict[tuple[int, str], list[float]] = {}
        peaks: dict[tuple[int, str], int] = {}
        for n in sizes:
            for rep in range(args.repeats):
                for engine in ENGINES[rep % 2 :] + ENGINES[: rep % 2]:
                    out = scratch / f"out-{n}-{engine}.parquet"
                    if out.is_dir():
                        shutil.rmtree(out)
                    cmd = command(engine, files[n], out, args)
                    elapsed, rss = run_measured(cmd, cwd=scratch, env=env)
                    times.setdefault((n, engine), []).append(elapsed)
                    peaks[(n, engine)] = max(peaks.get((n, engine), 0), rss)
                    print(f"{n:,} events, {engine}: {elapsed:.1f} s, peak RSS "
                          f"{rss / 2**30:.2f} GiB", flush=True)  # fmt: skip
            check = time.perf_counter()
            same_rows(scratch / f"out-{n}-local.parquet", scratch / f"out-{n}-spark.parquet")
            print(f"{n:,} events: Spark's rows == the local engine's "
                  f"(checked in {time.perf_counter() - check:.0f} s)", flush=True)  # fmt: skip

    print()
    rows = []
    for n in sizes:
        for engine in ENGINES:
            ts = times[(n, engine)]
            best, med = min(ts), statistics.median(ts)
            peak = peaks[(n, engine)] / 2**30
            all_runs = " ".join(f"{t:.3g}" for t in ts)
            rows.append((f"{n:,}", engine, best, med, n / best, peak, all_runs))
    table(
        rows,
        ["events", "engine", "best s", "median s", "events/s (best)", "peak RSS GiB", "all runs s"],
    )
    print()
    result: dict[str, float] = {}
    ratio_rows = []
    for n in sizes:
        local, spark = times[(n, "local")], times[(n, "spark")]
        best = min(spark) / min(local)
        med = statistics.median(spark) / statistics.median(local)
        ratio_rows.append((f"{n:,}", best, med))
        result[f"spark_over_local_{n}"] = best
    table(ratio_rows, ["events", "spark / local, best/best", "median/median"])
    faster = [n for n in sizes if min(times[(n, "spark")]) < min(times[(n, "local")])]
    print()
    print(
        f"measured: Spark faster at {', '.join(f'{n:,}' for n in faster)} events"
        if faster
        else f"measured: Spark slower at every size on {args.master}"
    )
    a, b = sizes[0], sizes[-1]
    if len(sizes) < 2 or b < 100 * a:
        print("crossover: not estimated (sizes less than 100 x apart: no per-event cost)")
        return result
    lines = {e: line(sizes, {n: min(times[(n, e)]) for n in sizes}) for e in ENGINES}
    table(
        [(e, fixed, per * 1e6) for e, (fixed, per) in lines.items()],
        ["engine", f"fixed s (line through {a:,} and {b:,})", "us per event"],
    )
    (fl, pl), (fs, ps) = lines["local"], lines["spark"]
    if ps < pl:
        cross = (fs - fl) / (pl - ps)
        print(f"crossover, extrapolated from those lines: Spark faster past {cross:,.0f} "
              f"events on {args.master}")  # fmt: skip
        result["crossover_events"] = cross
    else:
        print(
            f"crossover: none on {args.master}: Spark's per-event cost "
            f"({ps * 1e6:.2g} us) is above the local engine's ({pl * 1e6:.2g} us) too"
        )
        result["crossover_events"] = float("inf")
    return result


if __name__ == "__main__":
    main()
