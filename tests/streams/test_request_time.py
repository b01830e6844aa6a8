"""Scoring a transaction before it is accepted: ``POST /predict`` with a transaction answers
with the features the stream computes for it as the user's next event (equal to 1e-9 over
a thousand transactions, windows expiring in between, out-of-order ones and new users), and
nothing is written."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from featflow.settings import Settings
from features.feast_repo import apply_repo
from features.scoring_row import SCORING_FEATURES
from features.spec import DEFAULT_FEATURES, FEATURE_NAMES, Expiry
from features.state import WindowState
from inference.registry import ModelRegistry
from inference.service import build_app
from infra.partitioner import partition_of
from infra.producer import publish
from infra.topics import ensure_topics
from streams.generator import GeneratedEvents, generate_events
from streams.replica import FeatureReplica

HOUR = 3_600_000


def _register_model(settings: Settings) -> LogisticRegression:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(SCORING_FEATURES))).astype(np.float32)
    model = LogisticRegression().fit(x, (x[:, 11] > 0).astype(int))
    blob = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17).SerializeToString()
    registry = ModelRegistry(settings.stores.models_dir)
    registry.promote(registry.register(blob, {"feature_names": list(SCORING_FEATURES)}).version)
    return model


def _transactions(events: GeneratedEvents, n: int, seed: int) -> list[dict[str, object]]:
    """Transactions after each user's newest event by 0 s to 30 h (24-hour windows emptied),
    some up to 50 s behind it (accepted out of order), some 2 h behind (late), new users."""
    rng = np.random.default_rng(seed)
    newest = {}
    for u, t in zip(events.user_id.tolist(), events.event_time_ms.tolist(), strict=True):
        newest[u] = max(newest.get(u, t), t)
    users = rng.choice(events.user_id, size=n)  # busy users asked most, as in real traffic
    out = []
    for k in range(n):
        u = int(users[k])
        new = rng.random() < 0.05
        user = 10_000_000 + k if new else u
        base = events.event_time_ms.max() if new else newest[u]
        shift = rng.choice([0, 1_000, 600_000, 25 * HOUR, 30 * HOUR, -50_000, -2 * HOUR],
                           p=[0.1, 0.3, 0.25, 0.1, 0.05, 0.15, 0.05])  # fmt: skip
        known = events.merchant_id[events.user_id == u]
        merchant = int(rng.choice(known)) if rng.random() < 0.6 else int(rng.integers(1, 10**6))
        out.append({
            "user_id": user, "merchant_id": merchant,
            "amount": float(np.round(rng.lognormal(3, 1), 2)), "event_time": int(base + shift),
        })  # fmt: skip
    return out


@pytest.mark.timeout(300)
def test_a_transaction_is_scored_as_the_stream_will_see_it(settings: Settings) -> None:
    span = 40 * HOUR
    now = int(time.time() * 1000) - 40 * HOUR  # transactions up to 30 h later stay in the past
    events = generate_events(
        4000, users=80, start_ms=now - span, mean_gap_ms=span / 4000, seed=3, zipf=1.6,
        disorder_ms=20_000,
    )  # fmt: skip
    ensure_topics(settings.kafka, settings.topics)
    publish(settings.kafka, settings.topics.events, events.records())
    model = _register_model(settings)
    apply_repo(settings.stores)

    replica = FeatureReplica(
        kafka=settings.kafka, topic=settings.topics.events, specs=DEFAULT_FEATURES,
        lateness_ms=settings.lateness_ms, rules=settings.event_rules,
    ).start()  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while replica.lag() != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert replica.lag() == 0

        # the stream's state after the same events (per-user order is publication order)
        stream = WindowState(DEFAULT_FEATURES, lateness_ms=settings.lateness_ms)
        stream.update(events.user_id, events.event_time_ms, events.amount, events.merchant_id)
        snapshot = stream.snapshot()

        app = build_app(settings.stores, transactions=replica.peek, transactions_lag=replica.lag,
                        rules=settings.event_rules, lateness_ms=settings.lateness_ms)  # fmt: skip
        asked = _transactions(events, 1000, seed=4)
        got = late = expired = 0
        first: tuple[dict[str, object], dict[str, float]] | None = None
        with TestClient(app) as client:
            for tx in asked:
                # what the stream computes for this event if it arrives next
                alone = WindowState.restore(snapshot, lateness_ms=settings.lateness_ms)
                row = alone.update(
                    np.array([tx["user_id"]]), np.array([tx["event_time"]]),
                    np.array([tx["amount"]]), np.array([tx["merchant_id"]]),
                )  # fmt: skip
                response = client.post("/predict", json=tx)
                if row.late[0]:
                    assert response.status_code == 409, response.text
                    assert response.json()["detail"][0]["msg"].startswith("late:")
                    late += 1
                    continue
                assert response.status_code == 200, response.text
                body = response.json()
                stream_row = dict(zip(FEATURE_NAMES, row.features[0].tolist(), strict=True))
                # no merchant worker here: every merchant is new (the views' defaults)
                want = np.array([stream_row.get(n, 0.0) for n in SCORING_FEATURES])
                values = np.array([body["features"][n] for n in SCORING_FEATURES])
                np.testing.assert_allclose(values, want, rtol=1e-9, atol=1e-9)
                expected = model.predict_proba(want[None, :].astype(np.float32))[0, 1]
                assert body["score"] == pytest.approx(expected, abs=1e-5)
                assert body["features_found"] == stream.holds(int(tx["user_id"]))
                expired += int(body["features"]["txn_count_24h"] == 1 and stream.holds(
                    int(tx["user_id"])))  # fmt: skip
                got += 1
                first = first or (tx, body["features"])
            # nothing was written: the first transaction is answered as it was
            assert first is not None
            assert client.post("/predict", json=first[0]).json()["features"] == first[1]
            assert client.get("/health").json()["transactions_lag"] == 0
        assert got > 800 and late > 20 and expired > 50, (got, late, expired)
        assert replica.lag() == 0
    finally:
        replica.close()


def test_the_replica_follows_the_partitions_the_topic_has(settings: Settings) -> None:
    """A topic created with another partition count than the settings say (as a producer's
    auto-create does): the replica follows the topic's own partitions. It stopped before."""
    topics = dataclasses.replace(settings.topics, partitions=2)
    assert topics.partitions != settings.topics.partitions
    ensure_topics(settings.kafka, topics)
    events = generate_events(500, users=40, start_ms=1_767_225_600_000, mean_gap_ms=1000, seed=5)
    publish(settings.kafka, topics.events, events.records())
    replica = FeatureReplica(
        kafka=settings.kafka, topic=topics.events, specs=DEFAULT_FEATURES,
        lateness_ms=settings.lateness_ms,
    ).start()  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while replica.lag() != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert replica.lag() == 0
        users = np.unique(events.user_id)
        t = np.full(len(users), int(events.event_time_ms.max()) + 1000)
        _, late, known = replica.peek(users, users, np.full(len(users), 5.0), t)
        assert known.all() and not late.any()
    finally:
        replica.close()


def test_a_new_user_is_judged_by_the_clock_of_its_partition(settings: Settings) -> None:
    """A transaction of a user the replica has never seen, far behind the newest event of
    the partition the user's records land on, is late, as the stream will find it
    (``features.spec.Expiry``); a recent one is not."""
    expiry = Expiry(idle_ms=2 * 24 * HOUR, max_delay_ms=HOUR)
    ensure_topics(settings.kafka, settings.topics)
    events = generate_events(400, users=30, start_ms=1_767_225_600_000, mean_gap_ms=1000, seed=6)
    publish(settings.kafka, settings.topics.events, events.records())
    replica = FeatureReplica(
        kafka=settings.kafka, topic=settings.topics.events, specs=DEFAULT_FEATURES,
        lateness_ms=settings.lateness_ms, expiry=expiry,
    ).start()  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while replica.lag() != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert replica.lag() == 0
        parts = settings.topic_partitions
        of_event = partition_of(events.user_id, parts)
        newest = {p: int(events.event_time_ms[of_event == p].max()) for p in np.unique(of_event)}
        newcomers = np.arange(10_001, 10_041, dtype=np.int64)
        newcomers = newcomers[np.isin(partition_of(newcomers, parts), list(newest))]
        clock = np.array([newest[p] for p in partition_of(newcomers, parts).tolist()])
        amounts = np.full(len(newcomers), 5.0)
        _, late, known = replica.peek(newcomers, newcomers, amounts, clock - 2 * HOUR)
        assert not known.any() and late.all()
        _, late, _ = replica.peek(newcomers, newcomers, amounts, clock - HOUR // 2)
        assert not late.any()
    finally:
        replica.close()
