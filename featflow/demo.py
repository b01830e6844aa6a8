"""``featflow demo``: the whole loop on embedded defaults, then stop everything.

Starts a Tansu broker (unless ``FEATFLOW_KAFKA_BOOTSTRAP`` names one), a stream
worker in a child process, publishes synthetic events, waits until the worker
has checkpointed all of them, and prints features read back through Feast.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack

import click
import numpy as np

from featflow.settings import Settings


def run_demo(settings: Settings, *, n_events: int, users: int, timeout_s: float = 300.0) -> None:
    from featflow.processes import start_worker, stop_process, wait_caught_up
    from features.reader import read_online
    from infra.broker import embedded_broker
    from streams.generator import generate_events
    from streams.producer import publish
    from streams.topics import ensure_topics

    # A fresh data directory per run: the embedded broker starts empty, so
    # checkpoints and stores from an earlier run would not match its log.
    settings = settings.model_copy(update={"home": settings.home / "demo"})
    shutil.rmtree(settings.home, ignore_errors=True)
    with ExitStack() as stack:
        if "FEATFLOW_KAFKA_BOOTSTRAP" not in os.environ:
            broker = stack.enter_context(embedded_broker())
            settings = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{broker.port}"})
            click.echo(f"broker: Tansu on {settings.kafka_bootstrap}")
        settings = settings.model_copy(update={"checkpoint_interval_s": 1.0})
        ensure_topics(settings)
        worker = start_worker(settings)
        stack.callback(stop_process, worker)
        click.echo(f"worker: pid {worker.pid}, online store {settings.online_store}")

        start_ms = int(time.time() * 1000) - 2 * 3600 * 1000
        events = generate_events(
            n_events, users=users, start_ms=start_ms, mean_gap_ms=7_200_000 / n_events, seed=7
        )
        started = time.monotonic()
        publish(settings, events.records())
        click.echo(f"produced {n_events} events for {users} users")
        wait_caught_up(settings, [worker], timeout_s)
        click.echo(f"all events processed in {time.monotonic() - started:.1f}s")

        ids, counts = np.unique(events.user_id, return_counts=True)
        busiest = ids[np.argsort(-counts)][:5].tolist()
        frame = read_online(settings, busiest)
        click.echo("features of the 5 busiest users, read through Feast get_online_features:")
        click.echo(frame.T.to_string(header=False))
