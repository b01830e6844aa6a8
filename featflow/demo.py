"""``featflow demo``: the whole loop on embedded defaults, then stop everything.

Starts a Tansu broker (unless ``FEATFLOW_KAFKA_BOOTSTRAP`` names one), a stream
worker in a child process, publishes synthetic events, waits until the worker
has checkpointed all of them, and prints features read back through Feast.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack

import click

from featflow.settings import Settings


def run_demo(settings: Settings, *, n_events: int, users: int, timeout_s: float = 300.0) -> None:
    from features.reader import read_online
    from infra.broker import embedded_broker
    from streams.generator import generate_events
    from streams.lag import group_lag
    from streams.producer import publish
    from streams.topics import ensure_topics

    with ExitStack() as stack:
        if "FEATFLOW_KAFKA_BOOTSTRAP" not in os.environ:
            broker = stack.enter_context(embedded_broker())
            settings = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{broker.port}"})
            click.echo(f"broker: Tansu on {settings.kafka_bootstrap}")
        settings = settings.model_copy(update={"checkpoint_interval_s": 1.0})
        env = {
            **os.environ,
            "FEATFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "FEATFLOW_HOME": str(settings.home),
            "FEATFLOW_ONLINE_STORE": settings.online_store,
            "FEATFLOW_CHECKPOINT_INTERVAL_S": "1",
        }
        ensure_topics(settings)
        worker = subprocess.Popen([sys.executable, "-m", "featflow.cli", "worker"], env=env)
        stack.callback(_stop, worker)
        click.echo(f"worker: pid {worker.pid}, online store {settings.online_store}")

        start_ms = int(time.time() * 1000) - 2 * 3600 * 1000
        events = generate_events(
            n_events, users=users, start_ms=start_ms, mean_gap_ms=7_200_000 / n_events, seed=7
        )
        started = time.monotonic()
        publish(settings, events.records())
        click.echo(f"produced {n_events} events for {users} users")
        deadline = started + timeout_s
        while (lag := group_lag(settings)) > 0:
            if worker.poll() is not None:
                raise click.ClickException(f"worker exited with {worker.returncode}")
            if time.monotonic() > deadline:
                raise click.ClickException(f"worker still {lag} events behind after {timeout_s}s")
            time.sleep(0.5)
        click.echo(f"all events processed in {time.monotonic() - started:.1f}s")

        busiest = sorted(
            set(events.user_id.tolist()), key=lambda u: -int((events.user_id == u).sum())
        )
        frame = read_online(settings, busiest[:5])
        click.echo("features of the 5 busiest users, read through Feast get_online_features:")
        click.echo(frame.T.to_string(header=False))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
