"""Training data at scale: the training set for N labelled events, featflow vs Feast.

Data: ``generate_events(n, users = n * --users-per-event, --days days, zipf --zipf)`` (the
busiest user holds ~45 % of the events at 1.6) and a label for every event
(``generate_outcomes``). Every figure is a whole process, spawned fresh and timed from spawn
to exit, its peak RSS the child's own high-water mark (``VmHWM`` of ``/proc/<pid>/status``,
read by the child at exit or polled every 10 ms while it runs; ``ru_maxrss`` from
``os.wait4`` would also count this benchmark's own memory at the fork); the processes are
``benchmarks/training_set_child.py``:

(1) build: read the labels parquet, ``inference.train.training_set_by_event`` on an offline
    dir written beforehand (``features.backfill.backfill`` of the events file, one part file
    by ``features.offline.OfflineWriter``, as ``featflow train --events`` writes it);
(2) ``featflow train --events events.parquet --labels labels.parquet`` in an empty
    FEATFLOW_HOME: backfill into a scratch dir, build, fit the model
    (``inference.train.fit_model``) on the oldest 80 %, ONNX export and check, register;
    once as the console script, once through ``featflow.cli:run`` with its stages timed by
    wrappers (read events, backfill, offline write, build, train() and the model fit inside
    it; the rest is start-up, the labels file, registry and exit);
(3) Feast: ``FeatureStore.get_historical_features(entity_df, features).to_df()`` on the same
    offline rows (the repo applied by ``features.feast_repo.apply_repo``, the file offline
    store), entity_df = user_id, event_timestamp, label (and event_id, passed through) of
    every labelled event, at increasing sizes until one fails or passes --feast-timeout;
    each attempt under RLIMIT_AS --feast-memory-gib, so it cannot take the machine down.
    At each Feast size, (1) runs on the same files and the two outputs are compared row by
    row (by event id).

    python -m benchmarks.training_set [--sizes 100000 1000000] [--build-repeats 3]
        [--feast-sizes 2000 5000 7500 10000 15000 20000 30000] [--feast-timeout 300]
        [--feast-memory-gib 8] [--zipf 1.6] [--users-per-event 0.1] [--days 30] [--no-train]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from benchmarks._common import describe_activity, header, table, verdict, zipf_events
from benchmarks.backfill_vs_engines import ROOT, featflow_cmd, featflow_env
from features.scoring_row import MERCHANT_DEFAULTS, MERCHANT_INPUTS, SCORING_FEATURES
from features.spec import DAY_MS, DEFAULT_LATENESS_MS
from streams.generator import GeneratedEvents, generate_outcomes

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
GIB = 1024**3
TARGETS = {  # from the issue, "Training data at scale"
    "seconds_1m": 60.0,  # 1M labelled events in <= 60 s ...
    "rss_1m_mib": 2048.0,  # ... and <= 2 GB peak RSS, on 2 cores
    "feast_ratio": 20.0,  # >= 20 x Feast at the largest size Feast completes
}
CHILD = [sys.executable, "-m", "benchmarks.training_set_child"]


def inference_version() -> str:
    """The build and the fit live in inference/, which the banner's source hash leaves out:
    its own hash and uncommitted files."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "inference").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    dirty = ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        status = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(ROOT), "status", "--porcelain", "inference"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        dirty = ", ".join(line[3:] for line in status if line.strip())
    return f"sha256 {digest.hexdigest()[:12]}" + (f", uncommitted {dirty}" if dirty else "")


@dataclass
class Run:
    """One child process: wall seconds from spawn to exit, its own peak RSS, its report."""

    wall_s: float
    peak_mib: float
    code: int
    failure: str | None
    report: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""


def run_child(
    cmd: Sequence[str],
    *,
    scratch: Path,
    report: Path | None,
    env: dict[str, str] | None = None,
    timeout_s: float,
    address_space: int | None = None,
) -> Run:
    """Spawn, wait with ``os.wait4`` (rusage of this child only), kill its process group at
    ``timeout_s``; ``address_space`` bytes is its RLIMIT_AS."""

    def limit() -> None:
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    log = scratch / f"child-{time.monotonic_ns()}.log"
    timed_out = threading.Event()
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=scratch,
            env=env or featflow_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=limit,
            start_new_session=True,
        )

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    polled: list[float] = []
    watcher = threading.Thread(target=_poll_hwm, args=(proc.pid, polled), daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    watcher.join()
    wall = time.perf_counter() - start
    timer.cancel()
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here; Popen must not wait again
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    failure = None
    if timed_out.is_set():
        failure = f"timed out after {timeout_s:g} s"
    elif code:
        failure = f"exit {code}" + (" (MemoryError)" if "MemoryError" in tail else "")
    data = json.loads(report.read_text()) if report and report.exists() else {}
    # the child's own high-water mark: its report's, else the last one polled; ru_maxrss
    # carries the parent's resident memory at the fork, so only when neither exists
    peak = data.get("peak_mb") or (polled[-1] if polled else usage.ru_maxrss / 1024)
    return Run(wall, peak, code, failure, data, tail)


def _poll_hwm(pid: int, out: list[float]) -> None:
    """Append the child's VmHWM (MiB) every 10 ms until it exits (VmHWM never decreases)."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            return
        match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
        if match is None:  # a zombie has no memory left to report
            return
        out.append(int(match.group(1)) / 1024)
        time.sleep(0.01)


@dataclass(frozen=True)
class Prepared:
    """One size's files: events, labels, the offline rows written beforehand."""

    n: int
    events: Path
    labels: Path
    offline: Path
    repo: Path | None  # the applied Feast repo, where Feast runs
    entity: Path | None  # Feast's entity rows
    busiest_share: float


def prepare(n: int, folder: Path, args: argparse.Namespace, *, feast: bool) -> Prepared:
    """Events and labels files, and the offline rows ``featflow train --events`` would write
    (backfill of the events file, one part file)."""
    from features.backfill import backfill
    from features.event_files import read_events
    from features.merchant_backfill import write_views

    folder.mkdir(parents=True)
    span_ms = args.days * DAY_MS
    ev = zipf_events(n, args, start_ms=START_MS, span_ms=span_ms)
    # merchants as skewed as users: Zipf(1.5) over 10,000 (the busiest takes ~30 %)
    rng = np.random.default_rng(args.seed)
    weights = 1.0 / np.arange(1, 10_001) ** 1.5
    ev.merchant_id[:] = rng.choice(10_000, size=n, p=weights / weights.sum()) + 1
    outcomes = generate_outcomes(ev, seed=args.seed)
    events = folder / "events.parquet"
    pq.write_table(ev.table(), events)
    labels = folder / "labels.parquet"
    frame = outcomes.table().to_pandas()
    frame.to_parquet(labels)
    result = backfill(read_events(events), lateness_ms=DEFAULT_LATENESS_MS)
    if result.rejected:
        raise RuntimeError(f"{len(result.rejected)} events refused: {result.reasons()}")
    repo = entity = None
    if feast:
        from features.feast_repo import apply_repo
        from infra.config import Stores

        stores = Stores(folder / "home", "sqlite")
        apply_repo(stores)
        repo = stores.feature_repo
        root = stores.home / "offline"
        entity = folder / "entity.parquet"
        times = pd.to_datetime(ev.event_time_ms, unit="ms", utc=True)
        pd.DataFrame(
            {
                "user_id": ev.user_id,
                "event_timestamp": times,
                "label": outcomes.label,
                "event_id": outcomes.event_id,
            }
        ).to_parquet(entity)
    else:
        root = folder / "offline"
    offline = write_views(root, result.table, frame, tag="backfill")
    share = float(np.bincount(ev.user_id).max() / n)
    print(f"{n:,} labelled events: {describe_activity(ev, span_ms)}; {tied(ev):,} tied rows")
    return Prepared(n, events, labels, offline, repo, entity, share)


def tied(ev: GeneratedEvents) -> int:
    """Events that share their user and millisecond with another event of the file."""
    key = ev.user_id.astype(np.int64) * (1 << 42) + (ev.event_time_ms - START_MS)
    _, counts = np.unique(key, return_counts=True)
    return int(counts[counts > 1].sum())


def build(p: Prepared, scratch: Path, timeout_s: float, save: Path | None = None) -> Run:
    report = scratch / f"build-{p.n}-{time.monotonic_ns()}.json"
    cmd = [*CHILD, "build", str(p.offline), str(p.labels), str(report)]
    run = run_child(
        [*cmd, *([str(save)] if save else [])], scratch=scratch, report=report, timeout_s=timeout_s
    )
    if run.failure or run.report.get("rows") != p.n:
        raise RuntimeError(f"build at {p.n:,} failed: {run.failure}\n{run.log_tail}")
    return run


def train(p: Prepared, scratch: Path, timeout_s: float, *, staged: bool) -> Run:
    """``featflow train`` in an empty FEATFLOW_HOME (console script, or staged wrapper)."""
    home = Path(tempfile.mkdtemp(prefix=f"home-train-{p.n}-", dir=scratch))
    args = ["train", "--events", str(p.events), "--labels", str(p.labels)]
    env = featflow_env(FEATFLOW_HOME=str(home))
    report = scratch / f"train-{p.n}-{time.monotonic_ns()}.json"
    cmd = [*CHILD, "train", str(report), *args] if staged else [*featflow_cmd(), *args]
    run = run_child(
        cmd, scratch=scratch, report=report if staged else None, env=env, timeout_s=timeout_s
    )
    if run.failure or "registered" not in run.log_tail:
        raise RuntimeError(f"featflow train at {p.n:,} failed: {run.failure}\n{run.log_tail}")
    return run


def feast(p: Prepared, scratch: Path, args: argparse.Namespace, save: Path) -> Run:
    report = scratch / f"feast-{p.n}.json"
    assert p.repo is not None and p.entity is not None
    return run_child(
        [*CHILD, "feast", str(p.repo), str(p.entity), str(report), str(save)],
        scratch=scratch,
        report=report,
        timeout_s=args.feast_timeout,
        address_space=int(args.feast_memory_gib * GIB),
    )


def agreement(p: Prepared, ours: Path, theirs: Path) -> tuple[int, int]:
    """(rows with every feature equal, rows compared): featflow's rows come in
    (event_timestamp, event_id) order, Feast's carry the event id passed through."""
    events = pq.read_table(p.events, columns=["event_id", "user_id", "event_time"]).to_pandas()
    order = events.sort_values(["event_time", "event_id"], kind="stable")
    a = pd.read_parquet(ours)
    if len(a) != len(order) or not np.array_equal(a["user_id"], order["user_id"]):
        raise AssertionError(f"featflow's rows at {p.n:,} are not one per labelled event")
    a["event_id"] = order["event_id"].to_numpy()
    b = pd.read_parquet(theirs)
    for name, default in zip(MERCHANT_INPUTS, MERCHANT_DEFAULTS.tolist(), strict=True):
        b[name] = b[name].astype(float).fillna(default)  # no merchant row yet: a new merchant
    both = a.merge(b, on="event_id", suffixes=("", "_feast"))
    names = list(SCORING_FEATURES)
    x = both[names].to_numpy(np.float64)
    y = both[[f"{n}_feast" for n in names]].to_numpy(np.float64)
    same = ((x == y) | (np.isnan(x) & np.isnan(y))).all(axis=1)
    same &= (both["label"] == both["label_feast"]).to_numpy()
    return int(same.sum()), len(both)


def _best(runs: Sequence[Run]) -> Run:
    return min(runs, key=lambda r: r.wall_s)


@dataclass
class Measured:
    """Everything one benchmark run measured, for the tables and the verdicts."""

    shares: dict[int, float] = field(default_factory=dict)
    builds: dict[int, list[Run]] = field(default_factory=dict)
    trains: dict[int, tuple[Run, Run]] = field(default_factory=dict)  # console, staged
    feast: list[tuple[int, Run, Run]] = field(default_factory=list)  # n, build, Feast
    agree: dict[int, tuple[int, int]] = field(default_factory=dict)


def measure_sizes(args: argparse.Namespace, scratch: Path, out: Measured) -> None:
    """(1) and (2) at each of ``--sizes``."""
    for n in sorted(args.sizes):
        p = prepare(n, scratch / f"n{n}", args, feast=False)
        out.shares[n] = p.busiest_share
        runs = [build(p, scratch, args.timeout) for _ in range(args.build_repeats)]
        out.builds[n] = runs
        walls = " ".join(f"{r.wall_s:.3g}" for r in runs)
        print(f"{n:,} build: {walls} s (call {_best(runs).report['call_s']:.3g} s)", flush=True)
        if args.no_train:
            continue
        plain = train(p, scratch, args.timeout, staged=False)
        print(f"{n:,} featflow train: {plain.wall_s:.3g} s", flush=True)
        staged = train(p, scratch, args.timeout, staged=True)
        print(f"{n:,} featflow train, staged: {staged.wall_s:.3g} s", flush=True)
        out.trains[n] = (plain, staged)


def feast_ladder(args: argparse.Namespace, scratch: Path, out: Measured) -> None:
    """(3) at increasing ``--feast-sizes`` until a try fails, (1) beside each."""
    for n in sorted(args.feast_sizes):
        p = prepare(n, scratch / f"feast{n}", args, feast=True)
        ours_file, theirs_file = scratch / f"ours-{n}.parquet", scratch / f"feast-{n}.parquet"
        runs = [build(p, scratch, args.timeout, save=ours_file)]
        runs += [build(p, scratch, args.timeout) for _ in range(args.build_repeats - 1)]
        ours = _best(runs)
        theirs = feast(p, scratch, args, theirs_file)
        out.feast.append((n, ours, theirs))
        if theirs.failure:
            print(
                f"{n:,} feast: FAILED ({theirs.failure}) after {theirs.wall_s:.3g} s, peak RSS "
                f"{theirs.peak_mib:,.0f} MiB; its last lines:\n{theirs.log_tail}",
                flush=True,
            )
            return
        out.agree[n] = same, compared = agreement(p, ours_file, theirs_file)
        print(
            f"{n:,} feast: {theirs.wall_s:.3g} s (call {theirs.report['call_s']:.3g} s), "
            f"featflow build {ours.wall_s:.3g} s; {same:,} of {compared:,} rows equal "
            f"(featflow {ours.report['rows']:,}, Feast {theirs.report['rows']:,} rows)",
            flush=True,
        )


def print_tables(out: Measured) -> dict[str, float]:
    """The tables; returns the figures by name."""
    results: dict[str, float] = {}
    shares = ", ".join(f"{s:.1%} at {n:,}" for n, s in out.shares.items())
    print(f"\nbusiest user's share of the events: {shares}\n")
    rows: list[tuple[object, ...]] = []
    nan = float("nan")
    for n, runs in out.builds.items():
        best = _best(runs)
        walls = " ".join(f"{r.wall_s:.3g}" for r in runs)
        rows.append(
            (
                n,
                "build (training_set_by_event)",
                best.wall_s,
                best.report["call_s"],
                best.peak_mib,
                walls,
            )
        )
        results[f"build_{n}_s"], results[f"build_{n}_mib"] = best.wall_s, best.peak_mib
        if n in out.trains:
            plain, staged = out.trains[n]
            rows.append(
                (n, "featflow train (console script)", plain.wall_s, nan, plain.peak_mib, "")
            )
            rows.append(
                (n, "featflow train (stages timed)", staged.wall_s, nan, staged.peak_mib, "")
            )
            results[f"train_{n}_s"] = plain.wall_s
            results[f"train_{n}_mib"] = max(plain.peak_mib, staged.peak_mib)
    table(rows, ["labelled events", "what", "wall s", "call s", "peak RSS MiB", "all runs s"])

    for n, (_, staged) in out.trains.items():
        print(f"\nfeatflow train at {n:,} labelled events, by stage (the run with stages timed):")
        stages = staged.report.get("stages", [])
        accounted = sum(s["s"] for s in stages if not s.get("within"))
        ordered = []  # each stage, then the ones timed within it
        for top in (s for s in stages if not s.get("within")):
            ordered += [top, *(s for s in stages if s.get("within") == top["stage"])]
        split: list[tuple[object, ...]] = [
            (
                f"  of which {s['stage']}" if s.get("within") else s["stage"],
                s["s"],
                f"{s['s'] / staged.wall_s:.1%}",
                s["peak_mb"],
            )
            for s in ordered
        ]
        rest = staged.wall_s - accounted
        split.append(
            (
                "start-up, labels file, registry, exit (rest)",
                rest,
                f"{rest / staged.wall_s:.1%}",
                staged.peak_mib,
            )
        )
        table(split, ["stage", "s", "share", "peak RSS MiB so far"])
        for s in stages:
            results[f"train_{n}_{s['stage']}_s"] = s["s"]

    if out.feast:
        print()
        feast_rows: list[tuple[object, ...]] = []
        for n, ours, theirs in out.feast:
            mine = (n, ours.wall_s, ours.report["call_s"], ours.peak_mib)
            if theirs.failure:
                feast_rows.append(
                    (*mine, theirs.wall_s, f"failed: {theirs.failure}", theirs.peak_mib, "", "", "")
                )
                continue
            same, compared = out.agree[n]
            feast_rows.append(
                (
                    *mine,
                    theirs.wall_s,
                    theirs.report["call_s"],
                    theirs.peak_mib,
                    theirs.wall_s / ours.wall_s,
                    theirs.report["call_s"] / ours.report["call_s"],
                    f"{same:,} / {compared:,}",
                )
            )
        table(
            feast_rows,
            [
                "labelled events",
                "featflow s",
                "call s",
                "peak MiB",
                "Feast s",
                "call s",
                "peak MiB",
                "Feast / featflow",
                "call ratio",
                "rows equal",
            ],
        )
    return results


def judge(args: argparse.Namespace, out: Measured, results: dict[str, float]) -> None:
    """The issue's targets."""
    print()
    big = max(args.sizes)
    if big == 1_000_000:
        best = _best(out.builds[big])
        verdict(
            "training-set build, 1M labelled events, whole process (s)",
            best.wall_s,
            TARGETS["seconds_1m"],
            higher_is_better=False,
        )
        verdict(
            "training-set build, 1M labelled events, peak RSS (MiB)",
            best.peak_mib,
            TARGETS["rss_1m_mib"],
            higher_is_better=False,
        )
        if big in out.trains:
            plain, staged = out.trains[big]
            verdict(
                "featflow train --events --labels, 1M labelled events (s)",
                plain.wall_s,
                TARGETS["seconds_1m"],
                higher_is_better=False,
            )
            verdict(
                "featflow train --events --labels, 1M labelled events, peak RSS (MiB)",
                max(plain.peak_mib, staged.peak_mib),
                TARGETS["rss_1m_mib"],
                higher_is_better=False,
            )
    else:
        print(f"(no 1M size: the 1M targets are not judged; largest {big:,})")
    done = [(n, ours, theirs) for n, ours, theirs in out.feast if not theirs.failure]
    if not done:
        if args.feast_sizes:
            print("Feast completed no size: the ratio is not judged")
        return
    n, ours, theirs = done[-1]
    call = theirs.report["call_s"] / ours.report["call_s"]
    print(
        f"largest size Feast completed: {n:,} labelled events; the calls alone: Feast "
        f"{theirs.report['call_s']:.3g} s vs featflow {ours.report['call_s']:.3g} s = {call:.3g} x"
    )
    verdict(
        f"build vs Feast get_historical_features at {n:,}, whole processes (x)",
        theirs.wall_s / ours.wall_s,
        TARGETS["feast_ratio"],
    )
    results.update(feast_n=n, feast_ratio=theirs.wall_s / ours.wall_s, feast_call_ratio=call)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--build-repeats", type=int, default=3, help="build runs per size")
    parser.add_argument(
        "--feast-sizes",
        type=int,
        nargs="*",
        default=[2000, 5000, 7500, 10_000, 15_000, 20_000, 30_000],
    )
    parser.add_argument("--feast-timeout", type=float, default=300.0, help="seconds per try")
    parser.add_argument("--feast-memory-gib", type=float, default=8.0, help="RLIMIT_AS per try")
    parser.add_argument("--timeout", type=float, default=1800.0, help="featflow runs, seconds")
    parser.add_argument("--zipf", type=float, default=1.6, help="user activity exponent")
    parser.add_argument("--users-per-event", type=float, default=0.1, help="users = n * this")
    parser.add_argument("--days", type=float, default=30.0, help="event-time span of the data")
    parser.add_argument("--no-train", action="store_true", help="skip featflow train")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    header(
        "training_set: the training set for N labelled events, featflow vs Feast",
        f"""
inference/ (build, fit): {inference_version()}
data: generate_events(n, users = {args.users_per_event:g} n, {args.days:g} days, zipf
  {args.zipf:g}, in order), a label for every event (generate_outcomes), seed {args.seed}
every figure: one fresh process, wall time from spawn to exit (start-up included), its own
  peak RSS (ru_maxrss from os.wait4); processes are benchmarks/training_set_child.py
build: labels parquet + training_set_by_event(offline dir written beforehand), best of
  {args.build_repeats}; 'call' = the function alone, inside the process
featflow train: {" ".join(Path(c).name for c in featflow_cmd())} train --events events.parquet
  --labels labels.parquet, empty FEATFLOW_HOME; then the same through featflow.cli:run with
  its stages timed (one run each)
feast: get_historical_features(entity_df, {len(SCORING_FEATURES)} features).to_df(), file offline
  store, at {sorted(args.feast_sizes)} until a try fails or passes {args.feast_timeout:g} s;
  RLIMIT_AS {args.feast_memory_gib:g} GiB per try; featflow's build on the same files beside it""",
    )
    out = Measured()
    with tempfile.TemporaryDirectory(prefix="featflow-bench-training-") as tmp:
        measure_sizes(args, Path(tmp), out)
        feast_ladder(args, Path(tmp), out)
    results = print_tables(out)
    judge(args, out, results)
    return results


if __name__ == "__main__":
    main()
