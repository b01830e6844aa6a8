"""Starting featflow components as child processes with a given ``Settings``.

The demo, the tests and the benchmarks all start workers the same way: the
child gets the parent's settings as ``FEATFLOW_*`` environment variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr

from featflow.settings import Settings
from infra.process import die_with_parent


def settings_env(settings: Settings) -> dict[str, str]:
    """``os.environ`` plus every setting as a ``FEATFLOW_*`` variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATFLOW_")}
    env["FEATFLOW_LOGLEVEL"] = os.environ.get("FEATFLOW_LOGLEVEL", "warn")
    env.setdefault("PYTHONFAULTHANDLER", "1")  # a crash in native code still leaves a trace
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):  # str() would be its mask
            value = value.get_secret_value()
        if value is not None:  # unset stays unset (str(None) would be a value)
            env[f"FEATFLOW_{name.upper()}"] = str(value)
    return env


def start_worker(settings: Settings, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """``featflow worker`` in a child process (its output goes to ``log_path``)."""
    return start_command(settings, "worker", log_path)


def start_command(
    settings: Settings,
    command: str,
    log_path: Path | None = None,
    args: Sequence[str] = (),
    *,
    bound: bool = False,
) -> subprocess.Popen[bytes]:
    """``featflow <command> [args]`` (``worker``, ``monitor``, ...) in a child process;
    ``bound``: on Linux it is SIGKILLed when this process dies, however it dies (the demo's
    services must not outlive it)."""
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 (owned by the child)
    return subprocess.Popen(
        [sys.executable, "-m", "featflow.cli", command, *args],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        preexec_fn=die_with_parent() if bound else None,
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM (a clean faust shutdown writes final checkpoints), then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_caught_up(
    settings: Settings, workers: list[subprocess.Popen[bytes]], timeout: float
) -> float:
    """Block until the group has checkpointed every event, and the merchant workers every
    row those events (and the labels stored so far) sent them; returns seconds waited."""
    waited = wait_lag_at_most(settings, workers, 0, timeout)
    topic, group = settings.topics.merchant_rows, settings.worker.merchant_group
    return waited + _wait_group(settings, workers, group, topic, 0, timeout - waited)


def wait_lag_at_most(
    settings: Settings, workers: list[subprocess.Popen[bytes]], lag: int, timeout: float
) -> float:
    """Block until at most ``lag`` events are not yet checkpointed; fail fast if a worker dies."""
    group, topic = settings.consumer_group, settings.topics.events
    return _wait_group(settings, workers, group, topic, lag, timeout)


def _wait_group(
    settings: Settings,
    workers: list[subprocess.Popen[bytes]],
    group: str,
    topic: str,
    lag: int,
    timeout: float,
) -> float:
    from infra.lag import group_lag

    start = time.monotonic()
    while (behind := group_lag(settings.kafka, group, topic)) > lag:
        dead = [w for w in workers if w.poll() is not None]
        if dead:
            raise RuntimeError(f"worker pid {dead[0].pid} exited with {dead[0].returncode}")
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"workers still {behind} {topic} behind after {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - start
