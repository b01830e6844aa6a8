"""``featflow broker`` as a supervisor runs it: signals stop the broker, a busy port is refused."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from infra.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]


def _start_cli_broker(port: int) -> subprocess.Popen[str]:
    """``python -m featflow.cli broker`` from this checkout, its output piped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATFLOW_")}
    return subprocess.Popen(
        [sys.executable, "-m", "featflow.cli", "broker", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (a connection is refused)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def _wait_port_free(port: int, timeout: float = 10.0) -> bool:
    """Until nothing listens on the port. A killed multithreaded process shows as a zombie
    once its main thread is gone, while its other threads may still be closing sockets."""
    deadline = time.monotonic() + timeout
    while not _port_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _gone(proc: psutil.Process) -> bool:
    """Exited (a zombie counts: it holds no socket, and it may have no reaper here)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(proc: psutil.Process, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(proc):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def cli_broker() -> Iterator[tuple[subprocess.Popen[str], psutil.Process, int]]:
    """A running ``featflow broker``, its Tansu child and its port; both killed at the end."""
    port = free_port()
    parent = _start_cli_broker(port)
    assert parent.stdout is not None
    banner = parent.stdout.readline()
    assert banner.startswith(f"bootstrap: 127.0.0.1:{port}"), banner
    children = psutil.Process(parent.pid).children(recursive=True)
    assert len(children) == 1 and "tansu" in children[0].name(), children
    try:
        yield parent, children[0], port
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait(10)
        with contextlib.suppress(psutil.NoSuchProcess):
            children[0].kill()  # psutil checks it is still the same process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_termination_signal_stops_the_tansu_child(
    cli_broker: tuple[subprocess.Popen[str], psutil.Process, int], sig: signal.Signals
) -> None:
    parent, tansu, port = cli_broker
    parent.send_signal(sig)  # to the parent only, as a supervisor does (not the group)
    assert parent.wait(15) == 0
    assert _wait_gone(tansu), f"tansu pid {tansu.pid} still running after {sig.name}"
    assert _wait_port_free(port), f"port {port} still listening after {sig.name}"


def test_the_tansu_child_dies_with_a_killed_parent(
    cli_broker: tuple[subprocess.Popen[str], psutil.Process, int],
) -> None:
    parent, tansu, port = cli_broker
    parent.kill()
    parent.wait(15)
    assert _wait_gone(tansu), f"tansu pid {tansu.pid} outlived its SIGKILLed parent"
    assert _wait_port_free(port), f"port {port} still listening after its broker died"


@pytest.mark.parametrize("occupant", ["tansu", "plain socket"])
def test_a_second_broker_on_a_busy_port_is_refused(kafka_bootstrap: str, occupant: str) -> None:
    with socket.socket() as listener:
        if occupant == "tansu":
            port = int(kafka_bootstrap.rsplit(":", 1)[1])
        else:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
        started = time.monotonic()
        second = _start_cli_broker(port)
        try:
            output, _ = second.communicate(timeout=30)
        finally:
            second.kill()
        assert second.returncode != 0, output
        assert time.monotonic() - started < 15
        lines = output.strip().splitlines()
        assert len(lines) == 1 and f"port {port}" in lines[0] and "in use" in lines[0], output
        assert "bootstrap:" not in output and "Traceback" not in output
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the first one still listens


def test_a_server_that_exits_at_once_fails_fast() -> None:
    server = ServerProcess("quitter", [sys.executable, "-c", "raise SystemExit(3)"], free_port())
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"did not start .* \(exited with 3\)"):
        server.start(timeout=60)
    assert time.monotonic() - started < 15
