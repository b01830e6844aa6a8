"""Run every benchmark (``make bench``), each in its own process, then list the targets.

A separate process per benchmark keeps one benchmark's memory (the 1M-user state) and
servers from skewing the next, and lets one crash without hiding the others' results.

    python -m benchmarks.run_all [--quick] [--only NAME ...]

Default sizes take ~25 minutes on 2 cores (the soak alone 10), plus ~10 for
``spark_backfill`` (Spark on 10M events, twice) and ~30 for ``training_set`` (two
``featflow train`` runs on 1M labelled events, each ~12 minutes of model fit); ``--quick``
uses smaller ones (~5 minutes), which change the absolute figures, so quote the flags with
any number.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BENCHMARKS: dict[str, list[str]] = {
    "stream_throughput": [],
    "freshness": [],
    "backfill_vs_pandas": [],
    "backfill_vs_engines": [],
    "spark_backfill": [],
    "kernel_disorder": [],
    "kernel_aggs": [],
    "merchant_views": [],
    "monitor_metrics": [],
    "monitor_throughput": [],
    "state_memory": [],
    "state_churn": [],
    "checkpoint_store": [],
    "stream_soak": [],
    "predict_latency": [],
    "http_load": [],
    "training_set": [],
}
QUICK: dict[str, list[str]] = {
    "stream_throughput": [
        "--events", "50000", "--users", "5000", "--naive-events", "500", "--repeats", "1",
    ],
    "freshness": ["--seconds", "8", "--ramp-seconds", "3"],
    "backfill_vs_pandas": ["--events", "200000", "--users", "20000"],
    "backfill_vs_engines": [
        "--sizes", "10000", "100000", "--repeats", "1", "--cold-repeats", "1",
        "--help-repeats", "5",
    ],
    "spark_backfill": ["--sizes", "10000", "100000", "--repeats", "1"],
    "kernel_disorder": ["--events", "100000", "--users", "5000", "--repeats", "1"],
    "kernel_aggs": ["--events", "200000", "--repeats", "1"],
    "merchant_views": ["--events", "100000", "--repeats", "1"],
    "monitor_metrics": ["--pairs", "50000", "--repeats", "1"],
    "monitor_throughput": ["--predictions", "30000", "--repeats", "1"],
    "state_memory": ["--users", "100000"],
    "state_churn": ["--days", "6", "--events-per-day", "100000"],
    "checkpoint_store": ["--users", "100000", "--changed", "5000", "--repeats", "3"],
    "stream_soak": ["--minutes", "1.5", "--rate", "5000", "--days-per-minute", "4"],
    "predict_latency": ["--n", "2000"],
    "http_load": ["--seconds", "10", "--rounds", "1"],
    "training_set": [
        "--sizes", "20000", "--build-repeats", "1", "--feast-sizes", "2000", "5000",
    ],
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    summary: list[str] = []
    failed: list[str] = []
    for name in names:
        extra = QUICK[name] if args.quick else BENCHMARKS[name]
        cmd = [sys.executable, "-m", f"benchmarks.{name}", *extra]
        print(f"\n$ {' '.join(['python', *cmd[1:]])}", flush=True)
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("TARGET"):
                summary.append(f"{name}: {line.strip()}")
        code = proc.wait()
        elapsed = time.monotonic() - start
        if code:
            failed.append(name)
            summary.append(f"{name}: FAILED with exit code {code}")
        print(f"[{name} took {elapsed:.0f} s]", flush=True)
    print("\n=== summary ===")
    for line in summary:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
