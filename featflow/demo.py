"""``featflow demo``: the whole loop on embedded defaults, then stop everything.

1. Starts a Tansu broker (unless ``FEATFLOW_KAFKA_BOOTSTRAP`` names one) and a
   stream worker with stream scoring on.
2. Publishes synthetic events and their late labels (outcomes).
3. Waits until the worker has checkpointed every event and stored the labels,
   then prints features read back through Feast.
4. Trains a model on point-in-time features, registers and promotes it.
5. Serves ``/predict`` over HTTP and asks it about a few users.
6. Publishes more events: the worker scores each with the new champion.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import ExitStack

import click
import httpx
import numpy as np
import pandas as pd

from featflow.settings import Settings


def run_demo(settings: Settings, *, n_events: int, users: int, timeout_s: float = 300.0) -> None:
    """The whole loop on embedded servers: produce, stream, read back, train, serve, score."""
    import uvicorn

    from featflow.processes import start_worker, stop_process, wait_caught_up
    from featflow.training import train_with
    from features.reader import read_online
    from inference.publisher import PredictionPublisher
    from inference.service import build_app
    from infra.broker import embedded_broker
    from infra.process import free_port
    from infra.producer import publish
    from infra.topics import ensure_topics
    from streams.generator import generate_events, generate_outcomes

    # A fresh data directory per run: the embedded broker starts empty, so
    # checkpoints and stores from an earlier run would not match its log.
    settings = settings.model_copy(update={"home": settings.home / "demo"})
    shutil.rmtree(settings.home, ignore_errors=True)
    with ExitStack() as stack:
        if "FEATFLOW_KAFKA_BOOTSTRAP" not in os.environ:
            broker = stack.enter_context(embedded_broker())
            settings = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{broker.port}"})
            click.echo(f"broker: Tansu on {settings.kafka_bootstrap}")
        settings = settings.model_copy(
            update={"checkpoint_interval_s": 1.0, "stream_scoring": True}
        )
        ensure_topics(settings.kafka, settings.topics)
        worker = start_worker(settings)
        stack.callback(stop_process, worker)
        click.echo(f"worker: pid {worker.pid}, online store {settings.online_store}")

        now_ms = int(time.time() * 1000)
        events = generate_events(
            n_events, users=users, start_ms=now_ms - 7_200_000, mean_gap_ms=7_200_000 / n_events
        )
        outcomes = generate_outcomes(events, label_delay_ms=120_000)
        started = time.monotonic()
        publish(settings.kafka, settings.topics.events, events.records())
        publish(settings.kafka, settings.topics.outcomes, outcomes.records())
        click.echo(f"produced {n_events} events for {users} users, and a late label for each")
        wait_caught_up(settings, [worker], timeout_s)
        _wait_for_labels(settings, n_events, timeout_s)
        click.echo(f"all events processed and labels stored in {time.monotonic() - started:.1f}s")

        ids, counts = np.unique(events.user_id, return_counts=True)
        busiest = ids[np.argsort(-counts)][:3].tolist()
        frame = read_online(settings.stores, busiest)
        click.echo("\nfeatures of the 3 busiest users, read through Feast get_online_features:")
        click.echo(frame.astype(object).T.to_string(header=False))  # object: counts stay ints

        report = train_with(settings)
        click.echo(f"\ntrained {report.version}: holdout {report.metrics}")
        click.echo(f"{'promoted' if report.promoted else 'not promoted'}: {report.reason}")

        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(
                    settings.stores,
                    PredictionPublisher(settings.kafka, settings.topics.predictions),
                ),
                host="127.0.0.1",
                port=port,
                log_level="warning",
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        stack.callback(thread.join, 10)
        stack.callback(setattr, server, "should_exit", True)
        while not server.started:
            time.sleep(0.05)
        click.echo(f"\nserving on http://127.0.0.1:{port} (OpenAPI at /docs)")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            answer = http.post("/predict", json={"user_ids": [*busiest, 999_999_999]}).json()
        for p in answer["predictions"]:
            click.echo(
                f"  POST /predict user {p['user_id']}: score {p['score']:.3f} "
                f"({p['model_version']}, features found: {p['features_found']})"
            )

        more = generate_events(
            2000, users=users, start_ms=int(time.time() * 1000) - 60_000, mean_gap_ms=30, seed=8
        )
        publish(settings.kafka, settings.topics.events, more.records())
        wait_caught_up(settings, [worker], timeout_s)
        scored = _count_scored(settings, set(more.event_id))
        click.echo(f"\nstream scoring: {scored} of {len(more)} new events scored by the champion")


def _wait_for_labels(settings: Settings, expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        parts = list(settings.stores.outcomes_dir.glob("*.parquet"))
        if (
            parts
            and pd.read_parquet(settings.stores.outcomes_dir, columns=["event_id"]).shape[0]
            >= expected
        ):
            return
        time.sleep(0.5)
    raise click.ClickException("labels were not all stored in time")


def _count_scored(settings: Settings, event_ids: set[str]) -> int:
    import json

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        settings.predictions_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    try:
        return len({json.loads(m.value)["event_id"] for m in consumer} & event_ids)
    finally:
        consumer.close()
