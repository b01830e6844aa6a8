"""Shared steps of the end-to-end suites: publish, run workers, read back, compute the oracle."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from kafka import KafkaConsumer

from featflow.settings import Settings
from features.spec import DEFAULT_FEATURES, FEATURE_NAMES
from streams.generator import GeneratedEvents, generate_events
from testing.oracle import Stream, pandas_oracle


@dataclass(frozen=True)
class Expected:
    """Oracle feature rows, one per generated event (publication order)."""

    events: GeneratedEvents
    features: np.ndarray  # [n, F]

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.features, columns=list(FEATURE_NAMES))
        frame.insert(0, "event_id", self.events.event_id)
        frame.insert(1, "user_id", self.events.user_id)
        frame.insert(2, "event_time_ms", self.events.event_time_ms)
        return frame

    def latest_per_user(self) -> pd.DataFrame:
        """The row the online store must hold: each user's newest (and last-published) event."""
        frame = self.frame()
        return frame.groupby("user_id", sort=True).tail(1).set_index("user_id").sort_index()


def make_events(
    n: int, users: int, seed: int, hours: float = 6.0, zipf: float = 1.1
) -> GeneratedEvents:
    span_ms = hours * 3_600_000
    start_ms = int(time.time() * 1000 - span_ms)
    return generate_events(
        n, users=users, start_ms=start_ms, mean_gap_ms=span_ms / n, seed=seed, zipf=zipf
    )


def oracle(events: GeneratedEvents) -> Expected:
    stream = Stream(events.user_id, events.event_time_ms, events.amount, events.merchant_id)
    return Expected(events, pandas_oracle(stream, DEFAULT_FEATURES))


def check_stores(settings: Settings, expected: Expected, *, homes: Sequence[Path] = ()) -> None:
    """Online: each user's newest row equals the oracle's. Offline: exactly one row per event
    once replays are dropped (none lost, none counted twice), each equal to the oracle's.

    ``homes``: the ``$FEATFLOW_HOME`` of each worker, where they share no disk (their
    offline part files together are the offline store)."""
    from features.reader import read_online

    latest = expected.latest_per_user()
    got = read_online(settings.stores, latest.index.tolist()).set_index("user_id")
    np.testing.assert_allclose(
        got[list(FEATURE_NAMES)].to_numpy(float),
        latest[list(FEATURE_NAMES)].to_numpy(float),
        rtol=1e-9,
    )
    offline = read_offline(settings, homes=homes)
    assert sorted(offline["event_id"]) == sorted(expected.events.event_id)
    rows = offline.set_index("event_id").loc[expected.events.event_id]
    np.testing.assert_allclose(
        rows[list(FEATURE_NAMES)].to_numpy(float), expected.features, rtol=1e-9
    )


def read_dead_letters(settings: Settings, expected: int, timeout: float = 30.0) -> list[dict]:
    """Every record on the DLQ topic, with its headers decoded."""
    consumer = KafkaConsumer(
        settings.topics.dlq,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=2000,
    )
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for message in consumer:
                headers = {k: v.decode() for k, v in message.headers}
                out.append({"key": message.key, "value": message.value, **headers})
    finally:
        consumer.close()
    return out


def read_offline(settings: Settings, *, homes: Sequence[Path] = ()) -> pd.DataFrame:
    """All offline rows (of every home in ``homes``, else of the settings' home), replayed
    duplicates dropped by (partition, offset)."""
    folders = [settings.model_copy(update={"home": h}).stores.offline_dir for h in homes]
    frame = pd.concat(
        [pd.read_parquet(f) for f in folders or [settings.stores.offline_dir] if f.exists()]
    )
    return frame.drop_duplicates(["kafka_partition", "kafka_offset"]).reset_index(drop=True)


def assert_clean_log(path: Path) -> None:
    """A worker log without crashes or tracebacks (supervisors restart crashed agents)."""
    text = path.read_text(errors="replace")
    for marker in ("Traceback", "Crashed reason"):
        assert marker not in text, text[text.index(marker) - 500 : text.index(marker) + 2000]
