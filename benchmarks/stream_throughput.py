"""End-to-end stream throughput: raw consumer ceiling vs featflow's worker vs a naive job.

All consumers read the same pre-published topic (8 partitions) on an embedded Tansu broker;
features go to an embedded Redis online store. Each figure is a *processing* rate that
excludes process start-up, group join and the first batch:

(a) raw ceiling: an aiokafka group consumer in this process, configured like the worker's
    (same fetch sizes and waits, ``getmany(max_records=batch_max_records)``), that only
    JSON-decodes each value with msgspec. Timed from the first non-empty fetch to the N-th
    record: rate = (N - first fetch's records) / elapsed.
(b) featflow: ``featflow worker`` started with ``featflow.processes.start_worker`` (user
    features and merchant views in one process; (b') the same as two processes, roles
    ``users`` and ``merchants``, measured on the users process). Every batch
    it handles ends in an offline parquet part file whose mtime marks the end of that batch's
    decode + kernels + parquet write, and the previous batch's Redis write precedes it (one
    asyncio loop, batches strictly in turn). Rate = (N - rows of the first part file) /
    (mtime of the last part file - mtime of the first): exactly the batches after the first.
    Start-up (process start to the first part file) and the time until the group's committed
    lag is 0 (checkpoints commit every ``checkpoint_interval_s``) are printed too.
(c) naive: :mod:`benchmarks.naive_faust`, a faust per-event agent with Python deques and one
    Feast ``store.push`` per event, on its own topic of the first ``--naive-events`` events
    (it is ~100x slower, so a smaller N); rate = (N - 1) / (last - first processed event).

Ratios are of rates, so the different N of (c) does not matter. (a) and (b) alternate
``--repeats`` times in the same run and the best rate of each is used. With ``--breakdown``
(default) two more in-process consumers show where (b)'s time goes: (a) + featflow's
validating decoder, and (a) + the whole ``PartitionProcessor.process`` hot path (decode,
kernels, Arrow offline table) without any store I/O.

    python -m benchmarks.stream_throughput [--events 200000] [--users 20000]
        [--naive-events 3000] [--repeats 2] [--no-breakdown] [--skip-naive]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import redis

from benchmarks._common import (
    ACTIVITIES,
    ACTIVITY_HELP,
    Servers,
    describe_activity,
    fresh_settings,
    header,
    log_tail,
    make_events,
    servers,
    table,
    verdict,
    warm_up_kernels,
)
from featflow.processes import settings_env, start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from features.feast_repo import apply_repo
from features.spec import DEFAULT_FEATURES
from infra.config import PARTITION_FETCH_BYTES
from infra.events import decode_events
from infra.producer import publish
from infra.topics import ensure_topics
from streams.processor import PartitionProcessor

TARGET_VS_RAW = 0.5
TARGET_VS_NAIVE = 20.0


@dataclass(frozen=True)
class Rate:
    """A processing rate and the window it was measured over."""

    events: int  # events counted in the window
    seconds: float
    startup_s: float = float("nan")  # process start -> first batch done (subprocess runs)
    caught_up_s: float = float("nan")  # process start -> committed lag 0

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


# -- (a) and the breakdown: in-process consumers ------------------------------------------


async def _consume(settings: Settings, n: int, mode: str, passes: int) -> list[Rate]:
    """Read the topic ``passes`` times with the worker's consumer settings, doing ``mode``.

    One group join, then ``seek_to_beginning`` between passes: several short timed windows
    cost little, and the best of them is robust to a noisy neighbour on a 2-core machine.
    """
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        settings.events_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.consumer_group}-{mode}-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,  # as streams/worker.py
        fetch_max_wait_ms=max(settings.batch_max_wait_ms, 1),
    )
    decode = msgspec.json.decode
    rates: list[Rate] = []
    await consumer.start()
    try:
        for p in range(passes):
            if p:
                await consumer.seek_to_beginning()
            processors: dict[int, PartitionProcessor] = {}  # fresh state every pass
            seen = first_batch = 0
            t_first = 0.0
            while seen < n:
                fetched = await consumer.getmany(
                    timeout_ms=settings.batch_max_wait_ms or 1,
                    max_records=settings.batch_max_records,
                )
                for tp, records in fetched.items():
                    if mode == "json":
                        for record in records:
                            decode(record.value)
                    elif mode == "decode":
                        decode_events(
                            [r.value for r in records],
                            keys=[r.key for r in records],
                            offsets=[r.offset for r in records],
                        )
                    else:
                        processor = processors.get(tp.partition)
                        if processor is None:
                            processor = processors[tp.partition] = PartitionProcessor(
                                topic=tp.topic,
                                partition=tp.partition,
                                specs=DEFAULT_FEATURES,
                                lateness_ms=int(settings.allowed_lateness_s * 1000),
                                rules=settings.event_rules,
                            )
                        processor.process(records)
                    seen += len(records)
                if seen and not t_first:
                    t_first, first_batch = time.perf_counter(), seen
            rates.append(Rate(seen - first_batch, time.perf_counter() - t_first))
    finally:
        await consumer.stop()
    return rates


def raw_consumer(settings: Settings, n: int, mode: str, passes: int = 3) -> list[Rate]:
    return asyncio.run(_consume(settings, n, mode, passes))


# -- (b) featflow's worker -------------------------------------------------------------------


def _part_files(directory: Path, rows: dict[Path, tuple[float, int]]) -> int:
    """Add new (complete) part files to ``rows`` as path -> (mtime, rows); return total rows."""
    if directory.exists():
        for entry in os.scandir(directory):
            path = Path(entry.path)
            if entry.name.startswith(".") or path in rows:
                continue
            rows[path] = (entry.stat().st_mtime, pq.read_metadata(path).num_rows)
    return sum(r for _, r in rows.values())


def featflow_worker(
    settings: Settings,
    n: int,
    log: Path,
    *,
    profile: Path | None = None,
    timeout: float = 600.0,
    split: bool = False,
) -> Rate:
    """Run ``featflow worker`` over the topic from the start; rate from its part files.

    With ``split``, the user features and the merchant views run as two processes
    (``FEATFLOW_WORKER_ROLE`` users and merchants, both running throughout: they share the
    machine), and the rate is the users process's. With ``profile``, py-spy samples the
    worker from its first part file to its last (start-up excluded) and writes collapsed
    stacks there; see :func:`profile_summary`.
    """
    rows: dict[Path, tuple[float, int]] = {}
    t_start = time.time()
    others = []
    if split:
        merchants = settings.model_copy(update={"worker_role": "merchants"})
        others.append(start_worker(merchants, log.with_suffix(".merchants.log")))
        settings = settings.model_copy(update={"worker_role": "users"})
    worker = start_worker(settings, log)
    spy: subprocess.Popen[bytes] | None = None
    try:
        # Cheap polling (a directory listing every 20 ms): the worker has the CPU to itself.
        while (done := _part_files(settings.stores.offline_dir, rows)) < n:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}\n{log_tail(log)}")
            if time.time() - t_start > timeout:
                raise TimeoutError(f"worker wrote {done}/{n} rows\n{log_tail(log)}")
            if profile is not None and spy is None and done:
                spy = _start_py_spy(worker.pid, profile)
            time.sleep(0.02)
        if spy is not None:
            _stop_py_spy(spy)
            spy = None
        wait_caught_up(settings, [worker, *others], timeout=timeout)
        t_caught_up = time.time()
    finally:
        if spy is not None:
            _stop_py_spy(spy)
        for proc in [worker, *others]:
            stop_process(proc)
    marks = sorted(rows.values())
    t_first, first_rows = marks[0]
    t_last = marks[-1][0]
    return Rate(n - first_rows, t_last - t_first, t_first - t_start, t_caught_up - t_start)


def _start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    argv = [str(exe), "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
    return subprocess.Popen(
        [*argv, "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    """py-spy writes its output on SIGINT."""
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


#: Where the worker's time goes: (label, frame substring) matched anywhere in a stack,
#: first match wins, so nested categories come first.
PROFILE_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("online store write (Redis HSET pipeline)", "(features/online/"),
    ("merchant worker (re-keyed rows, merchant views)", "(streams/merchant_"),
    ("offline parquet part file write", "(features/offline.py"),
    ("checkpoint: state snapshot + fsync", "(streams/checkpointer.py"),
    ("window kernels (WindowState.update)", "update (features/state.py"),
    ("decode + validate (decode_events)", "decode_events (infra/events.py"),
    ("offline Arrow table build", "offline_table (features/rows.py"),
    ("rest of PartitionProcessor.process", "process (streams/processor.py"),
    ("aiokafka fetch / record parsing", "aiokafka"),
)


def profile_summary(raw: Path) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]]:
    """Samples per category and the top leaf frames, from py-spy's collapsed stacks.

    All threads count (the worker's store writes run in ``asyncio.to_thread``); idle
    samples are excluded by py-spy, so shares are of busy time.
    """
    counts: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, num = line.rpartition(" ")
        if not num.isdigit():
            continue
        k = int(num)
        total += k
        label = next((lbl for lbl, key in PROFILE_CATEGORIES if key in stack), "other")
        counts[label] = counts.get(label, 0) + k
        leaf = stack.rsplit(";", 1)[-1]
        leaves[leaf] = leaves.get(leaf, 0) + k
    order = [lbl for lbl, _ in PROFILE_CATEGORIES] + ["other"]
    cats = [(lbl, counts[lbl], f"{counts[lbl] / total:.0%}") for lbl in order if lbl in counts]
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:12]
    return cats, [(leaf[:90], k, f"{k / total:.1%}") for leaf, k in top]


# -- (c) the naive faust job -----------------------------------------------------------------


def naive_job(settings: Settings, n: int, log: Path, timeout: float = 900.0) -> Rate:
    """Run :mod:`benchmarks.naive_faust` over its own topic until it reports ``n`` events."""
    apply_repo(settings.stores)
    result = settings.home / "naive-result.json"
    env = {**settings_env(settings), "NAIVE_EXPECT": str(n), "NAIVE_RESULT": str(result)}
    t_start = time.time()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.naive_faust"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        while not result.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"naive job exited with {proc.returncode}\n{log_tail(log)}")
            if time.time() - t_start > timeout:
                raise TimeoutError(f"naive job: not {n} events in {timeout}s\n{log_tail(log)}")
            time.sleep(0.1)
    finally:
        stop_process(proc)
    data = json.loads(result.read_text())
    return Rate(n - 1, data["last"] - data["first"], data["first"] - t_start)


# -- driver ----------------------------------------------------------------------------------


def _flush_redis(srv: Servers) -> None:
    assert srv.redis_url
    client = redis.Redis.from_url(srv.redis_url)
    client.flushall()
    client.close()


def _redis_keys(srv: Servers) -> int:
    assert srv.redis_url
    client = redis.Redis.from_url(srv.redis_url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--naive-events", type=int, default=3_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hours", type=float, default=6.0, help="event-time span, ending now")
    parser.add_argument("--activity", choices=ACTIVITIES, default="zipf", help=ACTIVITY_HELP)
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one extra (b) run under py-spy (not timed): where the worker's time goes",
    )
    parser.add_argument("--profile-out", type=Path, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args(argv)
    n, n_naive = args.events, min(args.naive_events, args.events)

    header(
        "stream_throughput: raw consumer vs featflow worker vs naive faust+Feast push",
        (__doc__ or "").split("\n\n")[1]
        + f"\nsizes: N={n:,} events, {args.users:,} {args.activity} users over {args.hours:g} h, "
        f"{args.partitions} partitions; naive N={n_naive:,}; repeats={args.repeats}",
    )
    span_ms = args.hours * 3_600_000
    events = make_events(
        n,
        users=args.users,
        start_ms=int(time.time() * 1000 - span_ms),
        span_ms=span_ms,
        activity=args.activity,
        seed=11,
    )
    print(describe_activity(events, span_ms))
    records = list(events.records())
    warm_up_kernels()  # numba's disk cache then serves the worker and the in-process runs

    with servers("throughput") as srv:
        base = fresh_settings(srv, "tp", topic_partitions=args.partitions)
        ensure_topics(base.kafka, base.topics)
        t0 = time.perf_counter()
        publish(base.kafka, base.topics.events, records)
        publish_s = time.perf_counter() - t0
        print(f"published {n:,} events in {publish_s:.1f} s ({n / publish_s:,.0f}/s, kafka-python)")

        raw: list[Rate] = []
        worker: list[Rate] = []
        split: list[Rate] = []
        for r in range(args.repeats):
            passes = raw_consumer(base, n, "json")
            raw.extend(passes)
            rates = ", ".join(f"{x.per_s:,.0f}" for x in passes)
            print(f"  run {r + 1}: (a) raw json, passes: {rates} events/s", flush=True)
            _flush_redis(srv)
            settings_b = base.model_copy(
                update={
                    "home": srv.scratch / f"home-worker-{r}",
                    "consumer_group": f"{base.consumer_group}-worker-{r}",
                }
            )
            worker.append(featflow_worker(settings_b, n, srv.scratch / f"worker-{r}.log"))
            print(f"  run {r + 1}: (b) featflow  {worker[-1].per_s:>10,.0f} events/s", flush=True)
            _flush_redis(srv)
            settings_s = base.model_copy(
                update={
                    "home": srv.scratch / f"home-split-{r}",
                    "consumer_group": f"{base.consumer_group}-split-{r}",
                }
            )
            log_s = srv.scratch / f"split-{r}.log"
            split.append(featflow_worker(settings_s, n, log_s, split=True))
            print(f"  run {r + 1}: (b') split    {split[-1].per_s:>10,.0f} events/s", flush=True)
        keys = _redis_keys(srv)
        users = len(set(events.user_id.tolist()))
        assert keys >= users, f"online store holds {keys} keys for {users} users"

        profile: tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]] = ([], [])
        if args.profile:
            _flush_redis(srv)
            settings_p = base.model_copy(
                update={
                    "home": srv.scratch / "home-worker-profile",
                    "consumer_group": f"{base.consumer_group}-worker-profile",
                }
            )
            stacks = args.profile_out or srv.scratch / "worker-profile.txt"
            featflow_worker(settings_p, n, srv.scratch / "worker-profile.log", profile=stacks)
            profile = profile_summary(stacks)

        breakdown: dict[str, Rate] = {}
        if args.breakdown:
            for mode in ("decode", "process"):
                breakdown[mode] = max(raw_consumer(base, n, mode), key=lambda x: x.per_s)

        naive: Rate | None = None
        if not args.skip_naive:
            settings_c = fresh_settings(srv, "naive", topic_partitions=args.partitions)
            ensure_topics(settings_c.kafka, settings_c.topics)
            publish(settings_c.kafka, settings_c.topics.events, records[:n_naive])
            naive = naive_job(settings_c, n_naive, srv.scratch / "naive.log")

    best_a = max(raw, key=lambda x: x.per_s)
    best_b = max(worker, key=lambda x: x.per_s)
    best_s = max(split, key=lambda x: x.per_s)
    rows: list[tuple[object, ...]] = [
        ("(a) raw aiokafka + msgspec.json.decode", n, best_a.per_s, best_a.seconds, "", ""),
        (
            "(b) featflow worker (Redis online)",
            n,
            best_b.per_s,
            best_b.seconds,
            best_b.startup_s,
            best_b.caught_up_s,
        ),
        (
            "(b') users and merchants as two processes",
            n,
            best_s.per_s,
            best_s.seconds,
            best_s.startup_s,
            best_s.caught_up_s,
        ),
    ]
    names = {
        "decode": "    (a) + featflow decode_events",
        "process": "    (a) + PartitionProcessor.process (no I/O)",
    }
    for mode, rate in breakdown.items():
        rows.append((names[mode], n, rate.per_s, rate.seconds, "", ""))
    if naive is not None:
        rows.append(
            ("(c) naive faust agent + Feast push", n_naive, naive.per_s, naive.seconds, "", "")
        )
    print()
    table(
        rows,
        ["consumer", "N", "events/s (best)", "timed s", "startup s", "to lag 0 s"],
    )
    print("  all runs, events/s: (a) " + ", ".join(f"{x.per_s:,.0f}" for x in raw))
    print("                      (b) " + ", ".join(f"{x.per_s:,.0f}" for x in worker))
    print("                     (b') " + ", ".join(f"{x.per_s:,.0f}" for x in split))
    print(f"  online store: {keys:,} Redis keys for {users:,} users")
    if profile[0]:
        print("\n  where (b)'s time goes: py-spy samples of the worker (extra run)")
        table(profile[0], ["category (first match in the stack)", "samples", "share"])
        print()
        table(profile[1], ["top leaf frames (self time)", "samples", "share"])
    out = {"raw_eps": best_a.per_s, "featflow_eps": best_b.per_s, "split_eps": best_s.per_s}
    ratios = [
        ("(b) / (a)", best_b.per_s / best_a.per_s),
        ("(b') / (a)", best_s.per_s / best_a.per_s),
    ]
    if naive is not None:
        ratios.append(("(b) / (c)", best_b.per_s / naive.per_s))
        out["naive_eps"] = naive.per_s
    print()
    table(ratios, ["ratio of rates", "x"])
    print()
    verdict("featflow (one process) / raw consumer", best_b.per_s / best_a.per_s, TARGET_VS_RAW)
    verdict("featflow (two processes) / raw consumer", best_s.per_s / best_a.per_s, TARGET_VS_RAW)
    if naive is not None:
        verdict("featflow / naive per-event job", best_b.per_s / naive.per_s, TARGET_VS_NAIVE)
    return out


if __name__ == "__main__":
    main()
