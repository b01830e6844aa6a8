"""Merchant views: MerchantState.update vs DuckDB window functions, on Zipf merchants.

The four ``merchant_activity`` features (``features.views.MERCHANT_ACTIVITY``: transactions
in the last hour and 24 hours, distinct paying users and mean amount over 24 hours, each as
of the row and including it) for every transaction, computed two ways on the same rows:

- featflow: ``features.merchant_state.MerchantState().update(rows)`` on a fresh state, over
  the whole batch and in micro-batches of ``--batch`` rows (as the merchant worker gets
  them), single-threaded, in arrival order;
- DuckDB (what a user would reach for): ``count(*)``, ``count(DISTINCT user_id)`` and
  ``avg(amount)`` ``OVER (PARTITION BY merchant_id ORDER BY time_ms RANGE BETWEEN w - 1
  PRECEDING AND CURRENT ROW)`` over the events parquet file, ``SET threads = 2`` (the CI
  machine's cores), the result fetched as an Arrow table in row order.

Why: the merchant views are the first features keyed by an entity whose rows are heavily
skewed (the busiest merchant holds a third or more of all rows, so its 24-hour window holds
tens of thousands of rows and distinct users): this is where a per-entity window algorithm
pays, and where a columnar SQL engine is at its best.

Data: ``--events`` rows over ``--users`` users (uniform) and ``--merchants`` merchants drawn
Zipf(``--zipf``); times strictly increasing (integer-ms exponential gaps of at least 1 ms over
``--days`` days), so no two rows of a merchant share a millisecond and DuckDB's RANGE frames
(which take in ties) equal featflow's arrival-order windows; amounts lognormal, in cents.

Timed: in process, best of ``--repeats``, the engines interleaved in a rotated order:
perf_counter around the update(s) (rows already in memory as numpy arrays) and around the
query (over the rows already loaded into an in-memory DuckDB table); the first update of a
10-row batch in this process (Numba loading its cached kernels) is timed apart and is in no
in-process figure. Whole process, interleaved too: ``python -c`` that imports, reads the
parquet file, computes and writes a features parquet file, timed from spawn to exit; peak
RSS is the child's own VmHWM (``/proc/self/status``, printed as it ends). Before any timing,
and again on the whole-process outputs, every row's features must agree with DuckDB's
(counts exactly, the mean at rtol 1e-9), else it stops.

    python -m benchmarks.merchant_views [--events 1000000] [--users 50000] [--repeats 3]
        [--merchants 10000] [--zipf 1.5] [--days 7] [--batch 10000]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks._common import header, scratch_dir, table
from benchmarks.backfill_vs_engines import featflow_env
from features.merchant_state import MerchantState
from features.spec import DAY_MS, HOUR_MS
from features.views import MERCHANT_ACTIVITY
from infra.merchant_rows import EVENTS, MerchantRows

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
RTOL = 1e-9
THREADS = 2  # the CI machine's cores
NAMES = tuple(s.name for s in MERCHANT_ACTIVITY.specs)
EXPECTED = (
    ("merchant_txns_1h", "count", HOUR_MS),
    ("merchant_txns_24h", "count", DAY_MS),
    ("merchant_users_24h", "distinct", DAY_MS),
    ("merchant_amount_mean_24h", "mean", DAY_MS),
)


def check_specs() -> None:
    """The SQL below is written for these four features; stop if the view changed."""
    got = tuple((s.name, s.agg, s.window_ms) for s in MERCHANT_ACTIVITY.specs)
    if got != EXPECTED:
        raise SystemExit(f"MERCHANT_ACTIVITY changed ({got}); update the benchmark's SQL")


def duckdb_sql(relation: str) -> str:
    """The four features of every row of ``relation``, in row order (module docstring)."""
    frame = "PARTITION BY merchant_id ORDER BY time_ms RANGE BETWEEN {} PRECEDING AND CURRENT ROW"
    return f"""
SELECT row_id,
  count(*) OVER w1h AS merchant_txns_1h,
  count(*) OVER w24h AS merchant_txns_24h,
  count(DISTINCT user_id) OVER w24h AS merchant_users_24h,
  avg(amount) OVER w24h AS merchant_amount_mean_24h
FROM {relation}
WINDOW w1h AS ({frame.format(HOUR_MS - 1)}), w24h AS ({frame.format(DAY_MS - 1)})
ORDER BY row_id"""


# Whole processes: what a user runs, file in, file out (arguments: events.parquet out.parquet).
# Each prints its /proc/self/status last: VmHWM is the peak RSS of the process since its exec.
# (wait4's ru_maxrss is not: Linux carries the spawning process's RSS over the exec into it.)
FEATFLOW_CHILD = """
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from features.merchant_state import MerchantState
from features.views import MERCHANT_ACTIVITY
from infra.merchant_rows import MerchantRows
t = pq.read_table(sys.argv[1])
n = t.num_rows
c = {k: t.column(k).to_numpy() for k in ("row_id", "merchant_id", "user_id", "time_ms", "amount")}
rows = MerchantRows(np.zeros(n, np.int8), np.zeros(n, np.int32), c["row_id"], c["merchant_id"],
    c["user_id"], c["time_ms"], c["amount"], t.column("event_id").combine_chunks())
up = MerchantState().update(rows)
a = up.activity
cols = {"row_id": up.activity_rows.source_offset[a.rows]}
cols.update((s.name, a.features[:, j]) for j, s in enumerate(MERCHANT_ACTIVITY.specs))
pq.write_table(pa.table(cols), sys.argv[2])
print(open("/proc/self/status").read())
"""
DUCKDB_CHILD = """
import sys
import duckdb
con = duckdb.connect()
con.execute("SET threads = {threads}")
con.execute("COPY (" + sys.argv[3] + ") TO '" + sys.argv[2] + "' (FORMAT parquet)")
print(open("/proc/self/status").read())
"""


def make_rows(
    n: int, *, users: int, merchants: int, zipf: float, days: float, seed: int
) -> pa.Table:
    """The events (see the module docstring), with row_id = arrival position."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, merchants + 1, dtype=np.float64) ** -zipf
    ids = rng.permutation(merchants).astype(np.int64) + 1  # rank -> merchant id
    merchant = ids[rng.choice(merchants, size=n, p=weights / weights.sum())]
    mean_gap = days * DAY_MS / max(n, 1)
    gaps = 1 + np.floor(rng.exponential(max(mean_gap - 1, 0.0), size=n)).astype(np.int64)
    times = START_MS + np.cumsum(gaps)
    amount = np.round(rng.lognormal(3.5, 1.2, size=n), 2)
    return pa.table(
        {
            "row_id": np.arange(n, dtype=np.int64),
            "event_id": pa.array(np.arange(n, dtype=np.int64)).cast(pa.string()),
            "merchant_id": merchant,
            "user_id": rng.integers(1, users + 1, size=n, dtype=np.int64),
            "time_ms": times,
            "amount": amount,
        }
    )


def merchant_rows(t: pa.Table) -> MerchantRows:
    """The events as one source partition of the ``merchant_rows`` topic (offsets = rows)."""
    n = t.num_rows
    return MerchantRows(
        source=np.full(n, EVENTS, dtype=np.int8),
        source_partition=np.zeros(n, dtype=np.int32),
        source_offset=t.column("row_id").to_numpy(),
        merchant_id=t.column("merchant_id").to_numpy(),
        user_id=t.column("user_id").to_numpy(),
        time_ms=t.column("time_ms").to_numpy(),
        value=t.column("amount").to_numpy(),
        event_id=t.column("event_id").combine_chunks(),
    )


def featflow_run(batches: Sequence[MerchantRows]) -> tuple[float, np.ndarray, np.ndarray]:
    """(seconds, row ids, features) of one fresh state updated with each batch in turn."""
    state = MerchantState()
    start = time.perf_counter()
    updates = [state.update(b) for b in batches]
    took = time.perf_counter() - start
    for u in updates:
        if u.activity.refused or u.replays or len(u.activity.rows) != len(u.activity_rows):
            raise AssertionError(
                f"featflow refused rows ({u.activity.refused[:3]}, {u.replays} replays)"
            )
    ids = np.concatenate([u.activity_rows.source_offset[u.activity.rows] for u in updates])
    features = np.concatenate([u.activity.features for u in updates])
    return took, ids, features


def duckdb_run(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[float, np.ndarray, np.ndarray]:
    """(seconds, row ids, features) of the query, fetched as an Arrow table."""
    start = time.perf_counter()
    result = con.sql(sql).to_arrow_table()
    took = time.perf_counter() - start
    return took, *as_arrays(result)


def as_arrays(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, [n, 4] float64 features in the view's order) of a result table."""
    features = np.column_stack([t.column(k).to_numpy().astype(np.float64) for k in NAMES])
    return t.column("row_id").to_numpy(), features


def compare(
    label: str, ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray], n: int
) -> None:
    """Every row's four features equal, joined by row id (counts exact, mean rtol 1e-9)."""
    (ref_ids, ref_f), (ids, f) = ref, got
    for name, row_ids in (("reference", ref_ids), (label, ids)):
        if not np.array_equal(np.sort(row_ids), np.arange(n)):
            raise AssertionError(f"{name}: not one row per event ({len(row_ids):,} rows)")
    a = np.empty_like(ref_f)
    b = np.empty_like(f)
    a[ref_ids], b[ids] = ref_f, f
    bad = []
    for j, name in enumerate(NAMES):
        if j < 3:
            wrong = np.flatnonzero(a[:, j] != b[:, j])
        else:
            wrong = np.flatnonzero(~np.isclose(a[:, j], b[:, j], rtol=RTOL, atol=0.0))
        if wrong.size:
            r = int(wrong[0])
            bad.append(f"{name}: {wrong.size:,} rows, e.g. row {r}: {a[r, j]!r} vs {b[r, j]!r}")
    if bad:
        raise AssertionError(f"{label} differs from DuckDB:\n  " + "\n  ".join(bad))
    worst = float(np.max(np.abs(a[:, 3] - b[:, 3]) / np.abs(a[:, 3]))) if n else 0.0
    print(
        f"agreement: {label} == DuckDB on all {n:,} rows x {len(NAMES)} features (counts "
        f"exact, mean rtol {RTOL:g}; largest relative mean difference {worst:.2g})"
    )


def run_child(cmd: Sequence[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one whole process; raises with its output if it fails.

    Peak RSS is the VmHWM the child prints as it ends (see the child scripts)."""
    log = cwd / f"child-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, _ = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here; Popen must not wait again
    if code:
        raise RuntimeError(f"{cmd[:2]} failed ({code}):\n{log.read_text(errors='replace')[-3000:]}")
    hwm = re.findall(r"^VmHWM:\s+(\d+) kB", log.read_text(errors="replace"), re.MULTILINE)
    if not hwm:
        raise RuntimeError(f"{cmd[:2]} printed no VmHWM")
    return wall, int(hwm[-1]) / 1024


def parquet(path: Path) -> str:
    """A DuckDB table expression reading the parquet file at ``path``."""
    return "read_parquet('" + str(path).replace("'", "''") + "')"


def child_cmd(engine: str, source: Path, output: Path) -> list[str]:
    if engine == "featflow":
        return [sys.executable, "-c", FEATFLOW_CHILD, str(source), str(output)]
    script = DUCKDB_CHILD.format(threads=THREADS)
    return [sys.executable, "-c", script, str(source), str(output), duckdb_sql(parquet(source))]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--merchants", type=int, default=10_000)
    parser.add_argument("--zipf", type=float, default=1.5, help="merchant popularity exponent")
    parser.add_argument("--days", type=float, default=7.0, help="event-time span")
    parser.add_argument("--batch", type=int, default=10_000, help="micro-batch rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    check_specs()
    n = args.events

    events = make_rows(
        n, users=args.users, merchants=args.merchants, zipf=args.zipf, days=args.days,
        seed=args.seed,
    )  # fmt: skip
    merchant = events.column("merchant_id").to_numpy()
    times = events.column("time_ms").to_numpy()
    if n > 1 and not (np.diff(times) > 0).all():
        raise AssertionError("event times must strictly increase (no merchant ties)")
    counts = np.bincount(merchant)
    top = int(counts.max())
    header(
        "merchant_views: MerchantState.update vs DuckDB window functions",
        f"""
data: {n:,} rows, {args.users:,} users (uniform), {args.merchants:,} merchants Zipf({args.zipf:g}),
  {args.days:g} days, times strictly increasing (no two rows share a millisecond)
features: {", ".join(NAMES)} for every row
featflow: MerchantState().update(rows) on a fresh state: one batch of all rows, and
  micro-batches of {args.batch:,} rows; single-threaded
duckdb {duckdb.__version__}: count(*) / count(DISTINCT user_id) / avg(amount) OVER (PARTITION BY
  merchant_id ORDER BY time_ms RANGE BETWEEN w-1 PRECEDING AND CURRENT ROW), threads = {THREADS},
  fetched as Arrow in row order (in process: over an in-memory table of the rows)
in process: best of {args.repeats}, engines interleaved in a rotated order; whole process: python -c
  that imports, reads events.parquet, computes, writes features.parquet; peak RSS = VmHWM""",
    )
    print(
        f"\nbusiest merchant: {top:,} rows ({top / max(n, 1):.1%} of all, "
        f"{top / args.days:,.0f} per 24 h); merchants with rows: "
        f"{np.count_nonzero(counts):,}"
    )

    rows = merchant_rows(events)
    small = rows.take(np.arange(min(10, n)))
    start = time.perf_counter()
    MerchantState().update(small)
    load_s = time.perf_counter() - start
    print(f"first update of a {len(small)}-row batch in this process (Numba load): {load_s:.3f} s")
    whole = [rows]
    micro = [rows.take(np.arange(lo, min(lo + args.batch, n))) for lo in range(0, n, args.batch)]

    with scratch_dir("merchant") as scratch:
        source = scratch / "events.parquet"
        pq.write_table(events, source)
        sql = duckdb_sql("events")
        con = duckdb.connect()
        con.execute(f"SET threads = {THREADS}")
        con.execute(f"CREATE TABLE events AS SELECT * FROM {parquet(source)}")

        # Agreement before any timing (also warms the OS file cache and both engines).
        _, *reference = duckdb_run(con, sql)
        ref = (reference[0], reference[1])
        _, *got = featflow_run(whole)
        compare("featflow (one batch)", ref, (got[0], got[1]), n)
        _, *got = featflow_run(micro)
        compare(f"featflow ({args.batch:,}-row batches)", ref, (got[0], got[1]), n)
        max_24h = int(ref[1][:, 1].max()) if n else 0
        max_users = int(ref[1][:, 2].max()) if n else 0
        print(f"largest 24 h window: {max_24h:,} rows, {max_users:,} distinct users")

        inproc: dict[str, list[float]] = {"featflow": [], "featflow micro": [], "duckdb": []}
        runs = {
            "featflow": lambda: featflow_run(whole)[0],
            "featflow micro": lambda: featflow_run(micro)[0],
            "duckdb": lambda: duckdb_run(con, sql)[0],
        }
        engines = list(runs)
        for rep in range(args.repeats):
            for engine in engines[rep % 3 :] + engines[: rep % 3]:
                inproc[engine].append(runs[engine]())
        con.close()
        print(
            "in process, all runs (s): "
            + "; ".join(f"{e} " + " ".join(f"{t:.3g}" for t in ts) for e, ts in inproc.items())
        )

        env = featflow_env()
        procs: dict[str, list[tuple[float, float]]] = {"featflow": [], "duckdb": []}
        for rep in range(args.repeats + 1):  # the first round is untimed: it checks outputs
            for engine in ("featflow", "duckdb")[:: 1 if rep % 2 else -1]:
                out = scratch / f"out-{engine}.parquet"
                took = run_child(child_cmd(engine, source, out), cwd=scratch, env=env)
                if rep == 0:
                    compare(f"{engine} whole process", ref, as_arrays(pq.read_table(out)), n)
                else:
                    procs[engine].append(took)
        print(
            "whole process, all runs (s, peak RSS MiB): "
            + "; ".join(
                f"{e} " + " ".join(f"{t:.3g} ({m:,.0f})" for t, m in ps) for e, ps in procs.items()
            )
        )

    best = {e: min(ts) for e, ts in inproc.items()}
    wall = {e: min(t for t, _ in ps) for e, ps in procs.items()}
    rss = {e: max(m for _, m in ps) for e, ps in procs.items()}
    nan = float("nan")
    ff, mb, dd = best["featflow"], best["featflow micro"], best["duckdb"]
    summary = [
        ["featflow, one batch", ff, n / ff, wall["featflow"], rss["featflow"], dd / ff,
         wall["duckdb"] / wall["featflow"]],
        [f"featflow, {args.batch:,}-row batches", mb, n / mb, nan, nan, dd / mb, nan],
        [f"DuckDB SQL, {THREADS} threads", dd, n / dd, wall["duckdb"], rss["duckdb"], 1.0, 1.0],
    ]  # fmt: skip
    print()
    table(
        summary,
        ["engine", "in-process s", "rows/s", "whole process s", "peak RSS MiB",
         "speed-up in process", "speed-up whole"],
    )  # fmt: skip
    print(
        "speed-up = DuckDB s / featflow s (best of each; > 1: featflow faster); "
        f"medians in process: featflow {statistics.median(inproc['featflow']):.3g} s, "
        f"micro {statistics.median(inproc['featflow micro']):.3g} s, "
        f"duckdb {statistics.median(inproc['duckdb']):.3g} s"
    )
    print(
        textwrap.fill(
            f"Numba load (first 10-row update, not in the figures above): {load_s:.3f} s; the "
            "whole-process figures include it, with interpreter start-up and imports.",
            92,
        )
    )
    return {
        "featflow_s": best["featflow"],
        "featflow_micro_s": best["featflow micro"],
        "duckdb_s": best["duckdb"],
        "featflow_process_s": wall["featflow"],
        "duckdb_process_s": wall["duckdb"],
        "numba_load_s": load_s,
    }


if __name__ == "__main__":
    main()
