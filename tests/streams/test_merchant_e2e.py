"""End to end for the merchant views: kafka-python producer -> Tansu -> featflow worker (user
worker re-keys by merchant, merchant worker) -> Feast, on heavy-tailed merchants, through a
SIGKILL of the worker.

The oracle reads what reached each merchant partition (the ``merchant_rows`` topic, in offset
order), keeps the first copy of each source record, and computes each view with the
arrival-order reference of ``testing/oracle.py`` (no kernel code). Online rows are read with
Feast's ``get_online_features``, offline ones with ``get_historical_features`` too.
"""

from __future__ import annotations

import dataclasses
import io
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from featflow.processes import start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from features.feast_repo import open_store
from features.views import MERCHANT_ACTIVITY, MERCHANT_OUTCOMES, View
from infra.process import free_port
from infra.producer import publish
from infra.topics import ensure_topics
from streams.generator import generate_outcomes
from testing.oracle import Stream, bruteforce_oracle_np
from tests.streams.pipeline_helpers import assert_clean_log, make_events

RTOL = 1e-9
# records on merchant_rows that featflow did not write: random bytes, JSON, an Arrow stream
# of another schema, an empty value
_sink = pa.BufferOutputStream()
with pa.ipc.new_stream(_sink, pa.schema([("x", pa.int64())])) as _writer:
    _writer.write_table(pa.table({"x": [1, 2]}))
JUNK = (bytes(range(256)) * 2, b'{"merchant_id": 5}', _sink.getvalue().to_pybytes(), b"")


def _topic_rows(settings: Settings) -> tuple[pd.DataFrame, int]:
    """Every row on ``merchant_rows``, partition by partition in offset order, first copies;
    and how many second copies there were."""
    topic = settings.topics.merchant_rows
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        frames = []
        while any(consumer.position(tp) < end[tp] for tp in parts):
            for tp, messages in consumer.poll(timeout_ms=1000).items():
                for m in messages:
                    if m.value in JUNK:
                        continue  # the records built to break the decoder (dead letters)
                    table = pa.ipc.open_stream(io.BytesIO(m.value)).read_all().to_pandas()
                    table["partition"] = tp.partition
                    table["offset"] = m.offset
                    frames.append(table)
    finally:
        consumer.close()
    rows = pd.concat(frames, ignore_index=True)
    rows["seq"] = np.arange(len(rows))
    rows = rows.sort_values(["partition", "offset", "seq"], kind="stable")
    assert (rows["merchant_id"] % settings.topics.partitions == rows["partition"]).all()
    copies = rows.duplicated(["partition", "source", "source_partition", "source_offset"])
    return rows[~copies].reset_index(drop=True), int(copies.sum())


def _read_all(settings: Settings, topic: str) -> list:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )  # fmt: skip
    try:
        return list(consumer)
    finally:
        consumer.close()


def _oracle(rows: pd.DataFrame, view: View, source: int) -> pd.DataFrame:
    """The view's rows by the reference, keyed by (source partition, source offset)."""
    mine = rows[rows["source"] == source]
    other = mine["user_id"] if view.other_id == "user_id" else np.zeros(len(mine), np.int64)
    stream = Stream(
        mine["merchant_id"].to_numpy(np.int64),
        mine["time_ms"].to_numpy(np.int64),
        mine["value"].to_numpy(np.float64),
        np.asarray(other, dtype=np.int64),
    )
    # merchants live on one partition each, so partitions' rows can run one after another
    features, late = bruteforce_oracle_np(stream, view.specs, view.lateness_ms)
    frame = pd.DataFrame(features, columns=[s.name for s in view.specs])
    frame["merchant_id"] = stream.users
    frame["time_ms"] = stream.times
    frame["kafka_partition"] = mine["source_partition"].to_numpy()
    frame["kafka_offset"] = mine["source_offset"].to_numpy()
    return frame[~late].reset_index(drop=True)


def _offline(settings: Settings, view: View) -> pd.DataFrame:
    frame = pd.read_parquet(settings.stores.view_dir(view.name))
    return frame.drop_duplicates(["kafka_partition", "kafka_offset"]).reset_index(drop=True)


@pytest.mark.slow
def test_merchant_views_through_the_broker_and_a_kill(settings: Settings, tmp_path: Path) -> None:
    # no checkpoint before the kill (the first comes 5 s after a partition is taken), so the
    # restarted user worker sends every row again
    settings = settings.model_copy(update={"checkpoint_interval_s": 5.0})
    rng = np.random.default_rng(11)
    events = make_events(6000, users=300, seed=11)
    weights = 1.0 / np.arange(1, 81) ** 1.6  # the busiest merchant takes ~40 % of payments
    merchants = rng.choice(80, size=len(events), p=weights / weights.sum()) * 13 + 5
    events = dataclasses.replace(events, merchant_id=merchants.astype(np.int64))
    outcomes = generate_outcomes(events, seed=11, label_delay_ms=600_000)
    ensure_topics(settings.kafka, settings.topics)
    records = list(events.records())
    labels = list(outcomes.records())
    publish(settings.kafka, settings.topics.events, records[:3000])
    publish(settings.kafka, settings.topics.outcomes, labels[:1500])

    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        deadline = time.monotonic() + 60
        while not any(settings.stores.view_dir(MERCHANT_ACTIVITY.name).glob("*.parquet")):
            assert time.monotonic() < deadline, "no merchant rows written"
            time.sleep(0.1)
        # before the first checkpoint: both workers replay, the user worker re-sends its rows
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        publish(settings.kafka, settings.topics.events, records[3000:])
        publish(settings.kafka, settings.topics.outcomes, labels[1500:])
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        for value in JUNK:
            producer.send(settings.topics.merchant_rows, value=value, partition=1)
        producer.flush()
        producer.close()
        port = free_port()
        worker = start_worker(settings.model_copy(update={"worker_web_port": port}), log)
        wait_caught_up(settings, [worker], timeout=240)
        deadline = time.monotonic() + 60
        while len(_offline(settings, MERCHANT_OUTCOMES)) < len(labels):
            assert time.monotonic() < deadline, "labels did not reach the merchant view"
            time.sleep(0.5)
        wait_caught_up(settings, [worker], timeout=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
    finally:
        stop_process(worker)
    assert_clean_log(log)
    # the junk is on the merchant DLQ with its reason, and counted where operators look
    letters = _read_all(settings, settings.topics.merchant_rows_dlq)
    assert sorted(m.value for m in letters) == sorted(JUNK)
    assert all(dict(m.headers)["featflow.reason"] == b"schema" for m in letters)
    topic = settings.topics.merchant_rows
    assert f'featflow_dead_letters_total{{reason="schema",topic="{topic}"}} 4.0' in metrics

    rows, copies = _topic_rows(settings)
    assert copies > 0  # the kill made the user worker send rows a second time
    store = open_store(settings.stores)
    views = ((MERCHANT_ACTIVITY, 0, len(events)), (MERCHANT_OUTCOMES, 1, len(labels)))
    for view, source, n in views:
        expected = _oracle(rows, view, source)
        assert len(expected) == n  # nothing late in this stream: every event and label counts
        names = [s.name for s in view.specs]

        # Offline: one row per source record, equal to the reference.
        got = _offline(settings, view)
        merged = expected.merge(got, on=["kafka_partition", "kafka_offset"], suffixes=("", "_got"))
        assert len(merged) == len(expected) == len(got)
        np.testing.assert_allclose(
            merged[[f"{c}_got" for c in names]].to_numpy(float),
            merged[names].to_numpy(float),
            rtol=RTOL,
        )

        # Online, through Feast: each merchant's row of its newest time (last arrived).
        newest = expected.sort_values("time_ms", kind="stable").groupby("merchant_id").tail(1)
        online = (
            store.get_online_features(
                features=[f"{view.name}:{c}" for c in names],
                entity_rows=[{"merchant_id": int(m)} for m in newest["merchant_id"]],
            )
            .to_df()
            .set_index("merchant_id")
            .loc[newest["merchant_id"]]
        )
        np.testing.assert_allclose(
            online[names].to_numpy(float), newest[names].to_numpy(float), rtol=RTOL
        )

        # Offline, through Feast: point-in-time rows at a sample of unique (merchant, time).
        unique = expected.drop_duplicates(["merchant_id", "time_ms"], keep=False).sample(
            200, random_state=0
        )
        entity_df = pd.DataFrame(
            {
                "merchant_id": unique["merchant_id"].to_numpy(),
                "event_timestamp": pd.to_datetime(unique["time_ms"], unit="ms", utc=True),
            }
        )
        hist = store.get_historical_features(
            entity_df=entity_df, features=[f"{view.name}:{c}" for c in names]
        ).to_df()
        hist["time_ms"] = hist["event_timestamp"].astype("int64") // 1_000_000
        both = unique.merge(hist, on=["merchant_id", "time_ms"], suffixes=("", "_feast"))
        assert len(both) == len(unique)
        np.testing.assert_allclose(
            both[[f"{c}_feast" for c in names]].to_numpy(float),
            both[names].to_numpy(float),
            rtol=RTOL,
        )
