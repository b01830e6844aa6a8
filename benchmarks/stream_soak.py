"""A long stream at a fixed rate: the worker keeps up, its memory stays flat, nothing fails.

A child process publishes events (kafka-python, keyed by user) at ``--rate`` events/s for
``--minutes``; their event time runs ``--days-per-minute`` faster than the clock and users
churn (``--new-per-day`` new users a simulated day, each active ``--active-days``), so with
the worker's expiry (``--idle-hours`` idle, ``--delay-hours`` of delay; the product default,
30 days and 7 days, would need weeks of simulated time) users come, go and are dropped within
the run. Every 10 s: the group's lag; the worker's events applied, replays skipped,
partitions owned and its states' bytes (its ``/metrics``); its RSS, and the CPU of the
worker and of the broker (``/proc``: where the time goes when the lag grows). At the end:
the DLQ by reason and the worker's log checked for tracebacks.

The publisher batches for ``--linger-ms`` (100): the embedded broker's memory storage keeps
each batch as one object and lists all of a partition's objects on every fetch, so its cost
grows with the batches stored. With 5 ms batches its CPU reached 100 % in ~5 minutes and the
worker, waiting on fetches, fell behind (its own CPU down to 5 %); a real Kafka indexes its
segments and has no such cost.

    python -m benchmarks.stream_soak [--minutes 10] [--rate 12000] [--days-per-minute 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np

from benchmarks._common import fresh_settings, header, log_tail, servers, table
from featflow.processes import start_worker, stop_process
from featflow.settings import Settings
from infra.lag import group_lag
from infra.process import free_port
from infra.topics import ensure_topics

DAY_MS = 86_400_000
MIB = 1024**2


def _sender(settings: Settings, args: argparse.Namespace) -> tuple[Callable, Callable]:
    """(send(key, value), close()) of the publisher ``--publisher`` names."""
    if args.publisher == "kafka-python":
        from infra.producer import make_producer

        producer = make_producer(settings.kafka, linger_ms=args.linger_ms)

        def close() -> None:
            producer.flush()
            producer.close()

        return lambda key, value: producer.send(settings.topics.events, key=key, value=value), close
    from confluent_kafka import Producer  # librdkafka: a publisher that leaves CPU to the rest

    fast = Producer({
        "bootstrap.servers": settings.kafka.bootstrap, "linger.ms": args.linger_ms,
        "partitioner": "murmur2_random",  # kafka-python's (and Java's) partitions for a key
        "acks": "all", "enable.idempotence": False, "queue.buffering.max.messages": 1_000_000,
    })  # fmt: skip

    def send(key: bytes, value: bytes) -> None:
        while True:
            try:
                fast.produce(settings.topics.events, key=key, value=value)
                fast.poll(0)
                return
            except BufferError:  # its queue is full: let it drain
                fast.poll(0.05)

    return send, lambda: fast.flush(60)


def _publish(settings: Settings, args: argparse.Namespace, sent: multiprocessing.Value) -> None:
    """Events at ``args.rate`` for ``args.minutes``; event time from ``--minutes`` x
    ``--days-per-minute`` days ago up to now, users churning."""
    rng = np.random.default_rng(0)
    send, close = _sender(settings, args)
    encoder = msgspec.json.Encoder()
    total_s = args.minutes * 60
    sim_span = int(args.minutes * args.days_per_minute * DAY_MS)
    sim_start = int(time.time() * 1000) - sim_span
    weight = 1.0 / np.arange(1, args.new_per_day * args.active_days + 1) ** 1.5
    weight /= weight.sum()
    start, count, chunk = time.monotonic(), 0, 500
    while (elapsed := time.monotonic() - start) < total_s:
        ahead = count / args.rate - elapsed
        if ahead > 0:
            time.sleep(ahead)
        sim_now = sim_start + int(elapsed / total_s * sim_span)
        day = (sim_now - sim_start) // DAY_MS
        first = max(0, day - args.active_days + 1) * args.new_per_day
        users = first + rng.choice(len(weight), size=chunk, p=weight) + 1
        for user in users.tolist():
            value = {"event_id": f"s{count}", "user_id": user, "amount": 25.0,
                     "merchant_id": 1 + user % 997, "event_time": sim_now}  # fmt: skip
            send(str(user).encode(), encoder.encode(value))
            count += 1
        sent.value = count
    close()
    sent.value = count


def _dead_letters(settings: Settings) -> Counter[str]:
    """The DLQ's records by reason."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.topics.dlq, **settings.kafka.python_args(), auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )  # fmt: skip
    try:
        return Counter(dict(m.headers).get("featflow.reason", b"?").decode() for m in consumer)
    finally:
        consumer.close()


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (NaN when unknown)."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# the worker's /metrics samples each row shows (the states' bytes in MiB)
_SCRAPED = (
    "events_accepted_total",
    "events_replay_skipped_total",
    "partitions_owned",
    'state_bytes{state="users"}',
    'state_bytes{state="merchants"}',
)


def _scrape(port: int) -> list[str]:
    """:data:`_SCRAPED` from the worker's ``/metrics``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return ["?"] * len(_SCRAPED)
    values = dict(line.split()[:2] for line in text.splitlines() if line.startswith("featflow_"))
    out = []
    for name in _SCRAPED:
        value = float(values.get("featflow_" + name, "nan"))
        out.append(f"{value / MIB:,.0f}" if name.startswith("state_bytes") else f"{value:,.0f}")
    return out


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=12_000)
    parser.add_argument("--days-per-minute", type=float, default=2.0)
    parser.add_argument("--new-per-day", type=int, default=20_000)
    parser.add_argument("--active-days", type=int, default=2)
    parser.add_argument("--idle-hours", type=float, default=25.0)
    parser.add_argument("--delay-hours", type=float, default=1.0)
    parser.add_argument("--linger-ms", type=int, default=100, help="the publisher's batching")
    parser.add_argument(
        "--publisher", choices=("kafka-python", "confluent"), default="kafka-python",
        help="confluent (librdkafka) publishes several times faster",
    )  # fmt: skip
    parser.add_argument("--log", type=Path, help="keep a copy of the worker's log here")
    args = parser.parse_args(argv)
    header("stream_soak: a long stream at a fixed rate", (__doc__ or "").split("\n\n")[1])
    with servers("soak") as srv:
        settings = fresh_settings(
            srv, "soak", idle_reset_s=args.idle_hours * 3600, max_delay_s=args.delay_hours * 3600,
            worker_web_port=free_port(),
        )  # fmt: skip
        ensure_topics(settings.kafka, settings.topics)
        merchant_group = settings.worker.merchant_group
        log = srv.scratch / "worker.log"
        worker = start_worker(settings, log)
        sent = multiprocessing.Value("q", 0)
        publisher = multiprocessing.Process(target=_publish, args=(settings, args, sent))
        rows: list[list[object]] = []
        rss: list[float] = []
        times: list[float] = []
        lags: list[int] = []
        try:
            time.sleep(15)  # the worker's start-up and group join
            publisher.start()
            t0 = last = time.monotonic()
            cpu = (_cpu_s(worker.pid), _cpu_s(srv.broker_pid))
            while publisher.is_alive():
                time.sleep(10)
                assert worker.poll() is None, log_tail(log)
                lag = group_lag(settings.kafka, settings.consumer_group, settings.topics.events)
                rows_lag = group_lag(settings.kafka, merchant_group, settings.topics.merchant_rows)
                rss.append(_rss_mib(worker.pid))
                times.append(time.monotonic() - t0)
                lags.append(lag)
                now, was = time.monotonic(), cpu
                cpu = (_cpu_s(worker.pid), _cpu_s(srv.broker_pid))
                span = now - last
                share = [f"{100 * (c - w) / span:.0f}" for c, w in zip(cpu, was, strict=True)]
                last = now
                rows.append([f"{now - t0:.0f}", f"{sent.value:,}", f"{lag:,}", f"{rows_lag:,}",
                             *_scrape(settings.worker_web_port), f"{rss[-1]:,.0f}",
                             *share, f"{_rss_mib(srv.broker_pid):,.0f}"])  # fmt: skip
            publisher.join()
            time.sleep(15)
            final_lag = group_lag(settings.kafka, settings.consumer_group, settings.topics.events)
            final_lag += group_lag(settings.kafka, merchant_group, settings.topics.merchant_rows)
            letters = _dead_letters(settings)
        finally:
            if publisher.is_alive():
                publisher.terminate()
            stop_process(worker)
        if args.log:
            shutil.copyfile(log, args.log)
        table(rows, ["s", "published", "lag (events)", "lag (merchant rows)", "applied",
                     "replays skipped",
                     "partitions", "users MiB", "merchants MiB", "worker RSS MiB",
                     "worker CPU %", "broker CPU %", "broker RSS MiB"])  # fmt: skip
        text = log.read_text(errors="replace")
        crashed = "Traceback" in text or "Crashed reason" in text
        if final_lag:
            print(log_tail(log, 40))
        third = max(1, len(rss) // 3)
        early, late = float(np.median(rss[third : 2 * third])), float(np.median(rss[-third:]))
        print(f"  published {sent.value:,} events in {args.minutes:g} min "
              f"({sent.value / (args.minutes * 60):,.0f}/s); lag max {max(lags):,}, "
              f"after the stream {final_lag:,}")  # fmt: skip
        growth = late / early
        # the last 40 %: once the states have reached their high-water mark (they fill for
        # the windows' span, then saw-tooth as idle users go), the RSS should stop rising
        tail = slice(len(rss) * 3 // 5, None)
        minutes = np.array(times[tail]) / 60
        slope = float(np.polyfit(minutes, rss[tail], 1)[0]) if len(minutes) > 1 else 0.0
        print(f"  worker RSS, median of the middle third {early:,.0f} MiB, of the last third "
              f"{late:,.0f} MiB ({growth:.2f} x); the last 40 %: {min(rss[tail]):,.0f} to "
              f"{max(rss[tail]):,.0f} MiB, slope {slope:+.1f} MiB/min; tracebacks in its log: "
              f"{crashed}; dead letters by reason: {dict(letters) or 'none'}")  # fmt: skip
    return {"lag_max": float(max(lags)), "rss_growth": growth, "rss_slope": slope,
            "crashed": float(crashed)}  # fmt: skip


if __name__ == "__main__":
    main()
