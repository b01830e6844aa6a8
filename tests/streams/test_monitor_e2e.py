"""The monitor on the real broker: snapshots equal scikit-learn on the joined pairs, bad
records dead-lettered with their reason, rows on the topic and in parquet, /metrics text,
and a crash after a checkpoint neither loses nor double-counts a pair."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from kafka import KafkaConsumer, TopicPartition
from sklearn.metrics import roc_auc_score

from featflow.query import run_query
from featflow.settings import Settings
from inference.reference import histogram
from infra.lag import log_end_offsets
from infra.producer import publish
from infra.topics import ensure_topics
from monitoring.core import ModelBook
from monitoring.drift import Reference
from streams.monitor import Monitor, render_monitor_metrics

T0 = 1_767_225_600_000
enc = msgspec.json.Encoder()


def _book() -> ModelBook:
    rng = np.random.default_rng(0)
    refs = {"amount": Reference.of(histogram(rng.lognormal(3, 1, 5000))),
            "score": Reference.of(histogram(rng.random(5000), np.linspace(0, 1, 21)))}  # fmt: skip
    return ModelBook(lambda v: refs if v == "v1" else None, lambda v: {"auc": 0.7}, lambda: "v1")


def _data(seed: int, n: int, start: int = 0):
    rng = np.random.default_rng(seed)
    preds, outs = [], []
    for i in range(start, start + n):
        version = "v1" if i % 4 else "v2"
        score = float(rng.random())
        preds.append({"prediction_id": f"p{i}", "user_id": i % 37, "score": score,
                      "model_version": version, "event_id": f"e{i}", "event_time": T0 + i * 50,
                      "features": {"amount": float(rng.lognormal(3, 1))}})  # fmt: skip
        if rng.random() < 0.9:
            label = int(rng.random() < score)  # a model that knows something
            outs.append({"event_id": f"e{i}", "user_id": i % 37, "label": label,
                         "outcome_time": T0 + i * 50 + 1000,
                         **({"prediction_id": f"p{i}"} if i % 2 else {})})  # fmt: skip
    return preds, outs


def _read(settings: Settings, topic: str) -> list:
    """Every record of ``topic``."""
    consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)  # fmt: skip
    try:
        return list(consumer)
    finally:
        consumer.close()


def _send(settings: Settings, topic: str, records: list[dict]) -> None:
    publish(settings.kafka, topic,
            [(str(r.get("user_id", 0)).encode(), enc.encode(r)) for r in records])  # fmt: skip


def _ends(settings: Settings) -> dict[tuple[str, int], int]:
    """The last offset of every partition of predictions and outcomes (-1: empty)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        tps = [TopicPartition(t, p) for t in (settings.predictions_topic, settings.outcomes_topic)
               for p in range(settings.topic_partitions)]  # fmt: skip
        ends = log_end_offsets(consumer, tps)
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): end - 1 for tp, end in ends.items()}


async def _run_until_caught_up(monitor: Monitor, ends: dict, crash: bool = False) -> None:
    """Run until the monitor has read every record up to ``ends``; then stop (a last
    snapshot and checkpoint) or crash (cancel: no snapshot, no checkpoint)."""
    task = asyncio.create_task(monitor.run())
    for _ in range(1200):
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
        if all(monitor.offsets.get(k, -1) >= end for k, end in ends.items()):
            break
    else:
        raise AssertionError(f"monitor at {monitor.offsets}, log ends {ends}")
    if crash:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        monitor.stop()
        await task


def _expected_auc(preds: list[dict], outs: list[dict]) -> dict[str, tuple[float, int]]:
    p = pd.DataFrame(preds)
    o = pd.DataFrame(outs)
    joined = p.merge(o[["event_id", "label"]], on="event_id")
    return {
        v: (roc_auc_score(g["label"], g["score"]), len(g))
        for v, g in joined.groupby("model_version")
    }


def _rows(monitor: Monitor, metric: str) -> dict[str, tuple[float, int]]:
    return {r.model_version: (r.value, r.samples) for r in monitor.latest
            if r.metric == metric and r.feature is None}  # fmt: skip


def test_snapshots_dead_letters_and_outputs(settings: Settings) -> None:
    settings = settings.model_copy(update={"monitor_interval_s": 0.3})
    ensure_topics(settings.kafka, settings.topics)
    preds, outs = _data(1, 3000)
    _send(settings, settings.predictions_topic, preds)
    _send(settings, settings.outcomes_topic, outs)
    bad = [b'{"prediction_id": "x"}', b"not json", b'{"prediction_id":"y","user_id":1,'
           b'"score":7,"model_version":"v1","event_time":1767225600000}']  # fmt: skip
    publish(settings.kafka, settings.predictions_topic, [(b"1", v) for v in bad])
    publish(settings.kafka, settings.outcomes_topic, [(b"1", b'{"event_id": "e1", "label": 3}')])
    # keyed tombstones: their dead letters keep the key (aiokafka refuses to send a record
    # with neither key nor value, and that refusal once stopped the monitor)
    publish(settings.kafka, settings.predictions_topic, [(b"7", None)])
    publish(settings.kafka, settings.outcomes_topic, [(b"7", None)])
    publish(settings.kafka, settings.events_topic, [(b"1", b"{}")] * 3)  # and no worker runs
    cfg = dataclasses.replace(settings.monitor, window_labels=10**6, window_events=10**6)
    monitor = Monitor(cfg, _book())
    asyncio.run(_run_until_caught_up(monitor, _ends(settings)))
    want = _expected_auc(preds, outs)
    got = _rows(monitor, "auc")
    for version, (auc, n) in want.items():
        assert got[version][1] == n
        assert got[version][0] == pytest.approx(auc, abs=1e-9)
    assert monitor.snapshots >= 1
    assert dict(monitor.dead_letters) == {
        (settings.predictions_topic, "schema"): 1,
        (settings.predictions_topic, "malformed_json"): 2,
        (settings.predictions_topic, "out_of_range"): 1,
    }
    # bad outcomes are the worker's to dead-letter (it stores outcomes): counted here, not sent
    assert dict(monitor.outcomes_refused) == {"schema": 1, "malformed_json": 1}
    assert _read(settings, settings.topics.outcomes_dlq) == []
    letters = _read(settings, settings.topics.predictions_dlq)
    reasons = sorted(dict(m.headers)["featflow.reason"].decode() for m in letters)
    assert reasons == ["malformed_json", "malformed_json", "out_of_range", "schema"]
    (tombstone,) = [m for m in letters if m.value is None]
    assert tombstone.key == b"7"
    assert {m.key for m in letters} == {b"1", b"7"}  # every letter keeps its record's key
    files = sorted(settings.stores.monitoring_dir.glob("snapshot-*.parquet"))
    last = pq.read_table(files[-1]).to_pandas()
    auc_v1 = last[(last.metric == "auc") & (last.model_version == "v1")]
    assert auc_v1["value"].iloc[0] == pytest.approx(want["v1"][0], abs=1e-9)
    assert set(last[last.metric == "psi"]["feature"]) == {"amount", "score"}
    consumer = KafkaConsumer(settings.monitoring_topic, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)  # fmt: skip
    rows = [json.loads(m.value) for m in consumer]
    consumer.close()
    assert {"time_ms", "model_version", "metric", "feature", "value", "samples"} == set(rows[0])
    service = {(r.metric, r.feature): r.value for r in monitor.latest if r.model_version == "*"}
    assert service[("consumer_lag", None)] == 0  # the last snapshot: caught up
    assert service[("worker_lag", None)] == 3  # the worker group has read none of them
    assert service[("dead_letters", f"{settings.predictions_topic}/schema")] == 1
    assert service[("outcomes_refused", "schema")] == 1
    assert service[("outcomes_refused", "malformed_json")] == 1
    stored = pd.concat(
        pq.read_table(f).to_pandas() for f in settings.stores.predictions_dir.glob("*.parquet")
    )
    assert sorted(stored["prediction_id"]) == sorted(p["prediction_id"] for p in preds)
    assert not stored.duplicated(["kafka_partition", "kafka_offset"]).any()
    csv = run_query(settings.stores, "SELECT model_version, count(*) AS n FROM predictions "
                    "GROUP BY 1 ORDER BY 1", "csv")  # fmt: skip
    per_version = pd.Series([p["model_version"] for p in preds]).value_counts().sort_index()
    assert csv.splitlines()[1:] == [f"{v},{n}" for v, n in per_version.items()]
    text = render_monitor_metrics(monitor)
    assert 'featflow_monitor_auc{model_version="v1"}' in text
    assert 'featflow_monitor_psi{model_version="v1",feature="amount"}' in text


@pytest.mark.parametrize("store", ["files", "kafka"])
def test_a_crash_after_a_checkpoint_loses_and_doubles_nothing(
    settings: Settings, store: str, tmp_path: Path
) -> None:
    """Checkpoint after batch A, read batch B, crash (no checkpoint); a new monitor restores
    A's checkpoint, re-reads B and reads C: every pair counted exactly once. With the
    checkpoints in Kafka the new monitor runs on another machine (its own home)."""
    settings = settings.model_copy(
        update={"monitor_interval_s": 3600.0, "checkpoint_store": store}  # snapshots by hand
    )
    ensure_topics(settings.kafka, settings.topics)
    cfg = dataclasses.replace(settings.monitor, window_labels=10**6, window_events=10**6)
    batches = [_data(2, 1500), _data(3, 1000, start=1500), _data(4, 800, start=2500)]

    bad = [(b"%d" % i, b'{"prediction_id": %d}' % i) for i in range(5)]  # in batch B

    def send(k: int) -> None:
        _send(settings, settings.predictions_topic, batches[k][0])
        if k == 1:
            publish(settings.kafka, settings.predictions_topic, bad)
        _send(settings, settings.outcomes_topic, batches[k][1])

    async def first_life() -> Monitor:
        one = Monitor(cfg, _book())
        task = asyncio.create_task(one.run())
        for k in (0, 1):
            await asyncio.to_thread(send, k)
            ends = await asyncio.to_thread(_ends, settings)
            while not all(one.offsets.get(key, -1) >= end for key, end in ends.items()):
                await asyncio.sleep(0.05)
                if task.done():
                    task.result()
            if k == 0:
                await one.snapshot()  # the checkpoint: A only
        task.cancel()  # the crash: B was read, never checkpointed
        with pytest.raises(asyncio.CancelledError):
            await task
        return one

    one = asyncio.run(first_life())
    after_a = _expected_auc(*batches[0])
    assert {v: n for v, (_, n) in _rows(one, "auc").items()} == {
        v: n for v, (_, n) in after_a.items()
    }  # the last snapshot (and checkpoint) held A's pairs
    send(2)
    if store == "kafka":
        elsewhere = settings.model_copy(update={"home": tmp_path / "another-machine"})
        cfg = dataclasses.replace(cfg, stores=elsewhere.stores)
    two = Monitor(cfg, _book())
    asyncio.run(_run_until_caught_up(two, _ends(settings)))
    preds = [p for b in batches for p in b[0]]
    outs = [o for b in batches for o in b[1]]
    want = _expected_auc(preds, outs)
    got = _rows(two, "auc")
    for version, (auc, n) in want.items():
        assert got[version][1] == n  # every pair once: none lost, none twice
        assert got[version][0] == pytest.approx(auc, abs=1e-9)
    # it resumed after A's checkpoint: read B again and C, not A
    read_again = len(batches[1][0]) + len(bad) + len(batches[2][0])
    assert two.consumed[settings.predictions_topic] == read_again
    # B's bad predictions were dead-lettered by the first life, read again by the second,
    # and are in the DLQ once each
    letters = _read(settings, settings.topics.predictions_dlq)
    assert sorted(m.value for m in letters) == sorted(v for _, v in bad)
    assert two.consumed[settings.outcomes_topic] == len(batches[1][1]) + len(batches[2][1])
    (dup,) = [r for r in two.latest if r.metric == "duplicate_records"]
    assert dup.value == 0


def _latest_snapshot(settings: Settings) -> pd.DataFrame | None:
    files = sorted(settings.stores.monitoring_dir.glob("snapshot-*.parquet"))
    return pq.read_table(files[-1]).to_pandas() if files else None


def test_featflow_monitor_sigkilled_twice_counts_every_pair_once(
    settings: Settings, tmp_path
) -> None:
    """The real process: SIGKILL it twice while records flow; after the last restart its
    snapshots count every joined pair exactly once (no model registered: quality only)."""
    import signal
    import time

    from featflow.processes import start_command

    settings = settings.model_copy(
        update={"monitor_interval_s": 0.25, "monitor_window_labels": 10**6}
    )
    ensure_topics(settings.kafka, settings.topics)
    batches = [_data(5, 2000), _data(6, 2000, start=2000), _data(7, 2000, start=4000)]
    log = tmp_path / "monitor.log"
    proc = start_command(settings, "monitor", log)
    try:
        for k, (preds, outs) in enumerate(batches):
            _send(settings, settings.predictions_topic, preds)
            _send(settings, settings.outcomes_topic, outs)
            if k < 2:
                # kill once this life has checkpointed at least once (a snapshot file)
                before = len(list(settings.stores.monitoring_dir.glob("snapshot-*.parquet")))
                until = time.monotonic() + 60
                while (
                    len(list(settings.stores.monitoring_dir.glob("snapshot-*.parquet"))) <= before
                ):
                    assert proc.poll() is None and time.monotonic() < until, log.read_text()[-2000:]
                    time.sleep(0.05)
                time.sleep(0.1)  # and read a little past it
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = start_command(settings, "monitor", log)
        want = _expected_auc([p for b in batches for p in b[0]], [o for b in batches for o in b[1]])
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            snap = _latest_snapshot(settings)
            if snap is not None:
                auc = snap[(snap.metric == "auc") & snap.feature.isna()].set_index("model_version")
                if all(v in auc.index and auc.loc[v, "samples"] == n for v, (_, n) in want.items()):
                    break
                over = [
                    v for v, (_, n) in want.items() if v in auc.index and auc.loc[v, "samples"] > n
                ]
                assert not over, f"pairs counted twice for {over}"
            assert time.monotonic() < deadline, f"not caught up: {snap}\n{log.read_text()[-2000:]}"
            time.sleep(0.2)
        for version, (value, _) in want.items():
            assert auc.loc[version, "value"] == pytest.approx(value, abs=1e-9)
        dup = snap[snap.metric == "duplicate_records"]["value"].iloc[0]
        assert dup == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
