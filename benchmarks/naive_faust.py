"""The naive streaming feature job that featflow is compared with (stream_throughput's (c)).

What a first implementation usually looks like: a faust-streaming per-event agent that
json-decodes each event, keeps per-user Python deques of the last 24 h, computes the same
eleven features in Python and calls Feast ``store.push(..., to=PushMode.ONLINE)`` once per
event. Run as a child process by :mod:`benchmarks.stream_throughput`::

    FEATFLOW_*=... NAIVE_EXPECT=3000 NAIVE_RESULT=out.json python -m benchmarks.naive_faust

It reads its settings from ``FEATFLOW_*`` (``featflow.processes.settings_env``), expects the
Feast repo to be applied already, and after ``NAIVE_EXPECT`` events writes the wall-clock
times of the first and last processed event to ``NAIVE_RESULT`` (JSON) and keeps running
until the parent stops it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

from features.spec import DAY_MS, DEFAULT_FEATURES, FeatureSpec


class NaiveUserState:
    """One user's last 24 h of events plus ewm accumulators: plain Python, per event."""

    __slots__ = ("ewm", "prev_t", "rows", "tmax")

    def __init__(self) -> None:
        self.rows: deque[tuple[int, float, int]] = deque()
        self.ewm: dict[str, tuple[float, float]] = {}
        self.prev_t: int | None = None
        self.tmax: int | None = None

    def update(self, t: int, amount: float, merchant: int, specs: tuple[FeatureSpec, ...]):
        """Append the event, evict rows older than the longest window, return the features."""
        self.rows.append((t, amount, merchant))
        while self.rows and self.rows[0][0] <= t - DAY_MS:
            self.rows.popleft()
        features: dict[str, float | int] = {}
        for s in specs:
            if s.agg == "since_last":
                features[s.name] = -1.0 if self.prev_t is None else (t - self.prev_t) / 1000.0
            elif s.agg == "ewm_mean":
                num, den = self.ewm.get(s.name, (0.0, 0.0))
                if self.tmax is not None:
                    decay = 0.5 ** ((t - self.tmax) / s.window_ms)
                    num, den = num * decay, den * decay
                num, den = num + amount, den + 1.0
                self.ewm[s.name] = (num, den)
                features[s.name] = num / den
            else:
                assert s.window_ms is not None
                window = [r for r in self.rows if r[0] > t - s.window_ms]
                amounts = [r[1] for r in window]
                if s.agg == "count":
                    features[s.name] = len(window)
                elif s.agg == "distinct":
                    features[s.name] = len({r[2] for r in window})
                elif s.agg == "sum":
                    features[s.name] = sum(amounts)
                elif s.agg == "mean":
                    features[s.name] = sum(amounts) / len(amounts)
                elif s.agg == "max":
                    features[s.name] = max(amounts)
                elif s.agg == "min":
                    features[s.name] = min(amounts)
                elif s.agg == "std":
                    mean = sum(amounts) / len(amounts)
                    features[s.name] = math.sqrt(
                        sum((a - mean) ** 2 for a in amounts) / len(amounts)
                    )
        self.prev_t = t
        self.tmax = t if self.tmax is None else max(self.tmax, t)
        return features


def build_naive_app(expect: int, result_path: Path):  # -> faust.App
    """The faust app with one per-event agent on the events topic."""
    import faust
    import pandas as pd
    from feast.data_source import PushMode

    from featflow.settings import Settings
    from features.feast_repo import JOIN_KEY, PUSH_SOURCE, TIMESTAMP_FIELD, open_store

    settings = Settings()
    store = open_store(settings.stores)
    specs = DEFAULT_FEATURES
    app = faust.App(
        f"{settings.consumer_group}-naive",
        broker=f"kafka://{settings.kafka_bootstrap}",
        datadir=str(settings.home / "faust-naive"),
        web_enabled=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.group_session_timeout_s,
        broker_heartbeat_interval=max(settings.group_session_timeout_s / 6, 0.1),
        broker_rebalance_timeout=settings.group_session_timeout_s * 2,
    )
    topic = app.topic(settings.events_topic, key_serializer="raw", value_serializer="raw")
    users: dict[int, NaiveUserState] = {}
    seen = {"count": 0, "first": 0.0}

    @app.agent(topic)
    async def featurize(stream: AsyncIterator[bytes]) -> None:
        async for value in stream:
            event = json.loads(value)
            user = int(event["user_id"])
            t_ms = int(event["event_time"])
            state = users.setdefault(user, NaiveUserState())
            features = state.update(t_ms, float(event["amount"]), int(event["merchant_id"]), specs)
            row = {
                JOIN_KEY: user,
                TIMESTAMP_FIELD: pd.Timestamp(t_ms, unit="ms", tz="UTC"),
                **features,
            }
            store.push(PUSH_SOURCE, pd.DataFrame([row]), to=PushMode.ONLINE)
            seen["count"] += 1
            if seen["count"] == 1:
                seen["first"] = time.time()
            if seen["count"] == expect:
                tmp = result_path.with_suffix(".tmp")
                tmp.write_text(
                    json.dumps({"events": expect, "first": seen["first"], "last": time.time()})
                )
                tmp.replace(result_path)

    return app


def main() -> None:
    import faust

    app = build_naive_app(int(os.environ["NAIVE_EXPECT"]), Path(os.environ["NAIVE_RESULT"]))
    loglevel = os.environ.get("FEATFLOW_LOGLEVEL", "warn")
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
