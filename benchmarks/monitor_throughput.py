"""Monitor throughput: `featflow monitor`'s pipeline beside a raw consumer of the same topics.

Both read the same pre-published ``predictions`` and ``outcomes`` topics (8 partitions each)
on an embedded Tansu broker, every partition assigned, from the start:

(a) raw: an aiokafka consumer in this process that only JSON-decodes each value with
    msgspec (the ceiling: fetching and parsing), with the monitor's fetch size;
(b) featflow: :class:`streams.monitor.Monitor` in this process: the validating decoders,
    the join, the quality window of every model version, the drift window over all 11
    features and the score, and a snapshot (parquet, topic ``monitoring``, checkpoint)
    every ``--interval`` seconds.

Each is timed from the moment it is consuming (clients started, partitions assigned) to
having read every record, (b)'s snapshots on the way included; rate = records / seconds,
and joined pairs/s for (b). They alternate ``--repeats`` times in
the one run and the best of each is used.

    python -m benchmarks.monitor_throughput [--predictions 100000] [--repeats 2]
        [--interval 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time

import msgspec
import numpy as np

from benchmarks._common import fresh_settings, header, servers, table, verdict
from features.spec import FEATURE_NAMES
from inference.reference import histogram
from infra.config import PARTITION_FETCH_BYTES
from infra.producer import publish
from infra.topics import ensure_topics
from monitoring.core import ModelBook
from monitoring.drift import Reference
from streams.monitor import Monitor

TARGET = 0.3  # from the issue: monitor >= 0.3 x the raw consumer
T0 = 1_767_225_600_000
USERS = 20_000
ZIPF = 1.5  # the busiest user holds ~38 % of the predictions


def users(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` user ids with Zipf activity (weight of the k-th busiest ~ 1 / k**ZIPF)."""
    weights = 1.0 / np.arange(1, USERS + 1) ** ZIPF
    return rng.choice(USERS, size=n, p=weights / weights.sum())


def records(n: int, seed: int) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """``n`` predictions with all 11 features from Zipf users, and an outcome for 90 % of
    them."""
    rng = np.random.default_rng(seed)
    enc = msgspec.json.Encoder()
    feats = rng.lognormal(2.0, 1.0, size=(n, len(FEATURE_NAMES)))
    who = users(rng, n)
    preds, outs = [], []
    for i in range(n):
        user = int(who[i])
        score = float(rng.random())
        preds.append((str(user).encode(), enc.encode({
            "prediction_id": f"p{i}", "user_id": user, "score": score,
            "model_version": "v1", "event_id": f"e{i}", "event_time": T0 + i * 20,
            "features": dict(zip(FEATURE_NAMES, feats[i].tolist(), strict=True)),
        })))  # fmt: skip
        if rng.random() < 0.9:
            outs.append((str(user).encode(), enc.encode({
                "event_id": f"e{i}", "user_id": user, "label": int(rng.random() < score),
                "outcome_time": T0 + i * 20 + 5000,
            })))  # fmt: skip
    return preds, outs


def book(seed: int) -> ModelBook:
    """Reference bins for v1, as the trainer stores them (each user at most 2 %)."""
    rng = np.random.default_rng(seed)
    who = users(rng, 20_000)
    refs = {
        n: Reference.of(histogram(rng.lognormal(2.0, 1.0, 20_000), entities=who))
        for n in FEATURE_NAMES
    }
    refs["score"] = Reference.of(histogram(rng.random(20_000), entities=who))
    return ModelBook(lambda v: refs if v == "v1" else None, lambda v: {"auc": 0.7}, lambda: "v1")


async def raw(settings, total: int) -> float:
    """Seconds for a plain consumer to read and JSON-decode every record."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False,
                                max_partition_fetch_bytes=PARTITION_FETCH_BYTES)  # fmt: skip
    await consumer.start()
    try:
        topics = (settings.predictions_topic, settings.outcomes_topic)
        consumer.assign([TopicPartition(t, p) for t in topics for p in range(8)])
        await consumer.seek_to_beginning()
        decode = msgspec.json.decode
        start, seen = time.perf_counter(), 0
        while seen < total:
            fetched = await consumer.getmany(timeout_ms=20, max_records=5000)
            for msgs in fetched.values():
                for m in msgs:
                    decode(m.value)
                seen += len(msgs)
        return time.perf_counter() - start
    finally:
        await consumer.stop()


async def monitored(cfg, total: int, seed: int) -> tuple[float, int]:
    """Seconds for the monitor, once started (clients up, partitions assigned), to read
    every record, snapshots on the way included; and the pairs it joined."""
    monitor = Monitor(cfg, book(seed))
    task = asyncio.create_task(monitor.run())
    await monitor.started.wait()
    start = time.perf_counter()
    while sum(monitor.consumed.values()) < total:
        await asyncio.sleep(0.005)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - start
    monitor.stop()
    await task
    return elapsed, sum(monitor.core.joined.values())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--interval", type=float, default=1.0, help="monitor snapshot period")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    header(
        "monitor_throughput: featflow monitor vs a raw consumer of the same topics",
        f"""
data: {args.predictions:,} predictions (11 features each) + an outcome for 90 %, 8 partitions
(a) raw aiokafka + msgspec.json.decode; (b) streams.monitor.Monitor, snapshot every
  {args.interval:g} s, drift over 12 columns; best of {args.repeats}, alternating""",
    )
    preds, outs = records(args.predictions, args.seed)
    total = len(preds) + len(outs)
    with servers("monitor", redis=False) as srv:
        settings = fresh_settings(srv, "monitor", predictions_topic="bench_preds",
                                  outcomes_topic="bench_outs", topic_partitions=8)  # fmt: skip
        ensure_topics(settings.kafka, settings.topics)
        t = time.perf_counter()
        publish(settings.kafka, settings.predictions_topic, preds)
        publish(settings.kafka, settings.outcomes_topic, outs)
        print(f"published {total:,} records in {time.perf_counter() - t:.1f} s")
        raw_s, mon_s, pairs = [], [], 0
        for rep in range(args.repeats):
            raw_s.append(asyncio.run(raw(settings, total)))
            home = srv.scratch / f"home-{rep}"  # a fresh checkpoint each run
            monitor_cfg = settings.model_copy(update={"home": home}).monitor
            cfg = dataclasses.replace(monitor_cfg, interval_s=args.interval)
            seconds, pairs = asyncio.run(monitored(cfg, total, args.seed))
            mon_s.append(seconds)
    best_raw, best_mon = min(raw_s), min(mon_s)
    print()
    table(
        [
            ("(a) raw aiokafka + msgspec", total / best_raw, "", best_raw),
            ("(b) featflow monitor", total / best_mon, pairs / best_mon, best_mon),
        ],
        ["consumer", "records/s", "joined pairs/s", "seconds (best)"],
    )
    ratio = best_raw / best_mon
    print(f"\nall runs s: raw {', '.join(f'{x:.2f}' for x in raw_s)}; "
          f"monitor {', '.join(f'{x:.2f}' for x in mon_s)}")  # fmt: skip
    verdict("monitor / raw consumer (records/s)", ratio, TARGET)
    return {"ratio": ratio, "pairs_per_s": pairs / best_mon}


if __name__ == "__main__":
    main()
