"""Each command, run as a user runs it, without the broker, store, repo or model it needs.

Every one must answer in one line saying what to start or run, within seconds,
with a non-zero exit and no traceback.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from featflow.processes import settings_env
from featflow.settings import Settings
from infra.process import free_port

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 10.0  # FEATFLOW_CONNECT_TIMEOUT_S=2, plus a Python start and the imports


def _env(home: Path, bootstrap: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATFLOW_")}
    env |= {
        "FEATFLOW_HOME": str(home),
        "FEATFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "FEATFLOW_CONNECT_TIMEOUT_S": "2",
        **extra,
    }
    return env


def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "featflow.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def _assert_one_line(code: int, output: str, elapsed: float, *wanted: str) -> None:
    assert code != 0, output
    assert "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    for text in wanted:
        assert text in lines[0], output
    assert elapsed < BOUND_S, f"{elapsed:.1f}s: {output}"


@pytest.fixture
def nothing_listens() -> str:
    """A bootstrap address with no broker: connections are refused."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """Something that accepts TCP connections and never answers (not a Kafka broker)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    "args",
    [
        ["init"],
        ["produce", "--events", "10"],
        ["worker"],
        ["serve", "--port", "0"],
        ["demo", "--scale", "0.01"],
    ],
    ids=" ".join,
)
def test_without_a_broker(args: list[str], tmp_path: Path, nothing_listens: str) -> None:
    code, output, elapsed = _run(args, _env(tmp_path / "home", nothing_listens))
    port = nothing_listens.rsplit(":", 1)[1]
    _assert_one_line(
        code,
        output,
        elapsed,
        f"no Kafka broker answers at {nothing_listens}",
        "FEATFLOW_KAFKA_BOOTSTRAP",
        f"`featflow broker --port {port}`",
    )
    if args[0] == "serve":
        assert "--no-publish" in output


@pytest.mark.parametrize("args", [["init"], ["produce", "--events", "10"]], ids=" ".join)
def test_a_listener_that_is_no_broker(
    args: list[str], tmp_path: Path, silent_listener: str
) -> None:
    """The TCP check passes; kafka-python's own bootstrap must give up within the timeout."""
    code, output, elapsed = _run(args, _env(tmp_path / "home", silent_listener))
    _assert_one_line(code, output, elapsed, f"no Kafka broker answers at {silent_listener}")


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["features", "1"], "run `featflow init` first"),
        (["train"], "pass --labels FILE"),
        (["models", "list"], "run `featflow train` first"),
        (["models", "show", "v0001"], "run `featflow train` first"),
        (["models", "promote", "v0001"], "run `featflow train` first"),
        (["models", "rollback"], "run `featflow train` first"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_before_init(args: list[str], hint: str, tmp_path: Path, nothing_listens: str) -> None:
    code, output, elapsed = _run(args, _env(tmp_path / "home", nothing_listens))
    _assert_one_line(code, output, elapsed, hint, str(tmp_path / "home"))


def test_train_without_offline_features(tmp_path: Path, nothing_listens: str) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("event_id,label\ne1,1\n")
    code, output, elapsed = _run(
        ["train", "--labels", str(labels)], _env(tmp_path / "home", nothing_listens)
    )
    _assert_one_line(code, output, elapsed, "no features in the offline store", "--events FILE")


@pytest.mark.parametrize(
    "args", [["worker"], ["serve", "--port", "0", "--no-publish"], ["demo"]], ids=" ".join
)
def test_without_redis(args: list[str], tmp_path: Path, kafka_bootstrap: str) -> None:
    redis = f"redis://127.0.0.1:{free_port()}"
    env = _env(tmp_path / "home", kafka_bootstrap, FEATFLOW_ONLINE_STORE=redis)
    code, output, elapsed = _run(args, env)
    _assert_one_line(code, output, elapsed, f"no Redis at {redis}", "FEATFLOW_ONLINE_STORE")


def test_models_show_of_an_unknown_version(tmp_path: Path, nothing_listens: str) -> None:
    (tmp_path / "home" / "models" / "v0001").mkdir(parents=True)
    (tmp_path / "home" / "models" / "v0001" / "metadata.json").write_text("{}")
    code, output, elapsed = _run(
        ["models", "show", "v0007"], _env(tmp_path / "home", nothing_listens)
    )
    _assert_one_line(code, output, elapsed, "v0007", "`featflow models list`")


def test_serve_says_where_it_listens(settings: Settings) -> None:
    """With a broker (publishing on) and no model yet: the line, then /health answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "featflow.cli", "serve", "--port", "0"],
        cwd=ROOT,
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    reader = ThreadPoolExecutor(1)  # the line, or the server's exit, within 120 s
    try:
        line = reader.submit(proc.stdout.readline).result(timeout=120)
        found = re.fullmatch(r"serving on (http://127\.0\.0\.1:\d+) \(OpenAPI at /docs\)\n", line)
        assert found, line + (proc.stdout.read() if proc.poll() is not None else "")
        health = httpx.get(f"{found.group(1)}/health", timeout=10)
        assert health.status_code == 503  # ready once a model is promoted
        assert health.json()["model_version"] is None
        assert health.json()["online_store"] == "ok"
        assert "featflow train" in reader.submit(proc.stdout.readline).result(timeout=30)
    finally:
        proc.terminate()
        proc.wait(30)
        reader.shutdown()  # its readline ends with the server's output
