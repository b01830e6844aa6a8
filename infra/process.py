"""A child server process that is ready when its TCP port accepts connections.

Shared by the broker and Redis launchers so both start, wait and stop the same
way: tests and the demo must never leave a server behind. On Linux the kernel
kills the child when its parent dies, even by SIGKILL (``PR_SET_PDEATHSIG``);
the death signal follows the thread that started the child, so start servers
from a thread that outlives them (the main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType

TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class PortInUse(RuntimeError):
    """The server's port is already bound by another process."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (SO_REUSEADDR, as servers bind)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def wait_for_port(
    host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True
) -> None:
    """Block until ``host:port`` accepts a TCP connection or raise ``TimeoutError``.

    Gives up early once ``alive()`` is false: a dead server will not open its port.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if not alive() or time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux SIGKILL the child when its parent dies; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the death signal was armed
            os._exit(1)

    return preexec


class ServerProcess:
    """Runs ``argv`` until stopped; ``start`` returns once ``port`` is open."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path | None = None):
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 20.0) -> ServerProcess:
        """Spawn the server and wait for its port; ``PortInUse`` if another process has it.

        The port is checked before spawning, and the child must still be running
        once the port opens: otherwise the open port is someone else's.
        """
        if not port_is_free("127.0.0.1", self.port):
            raise PortInUse(f"port {self.port} on 127.0.0.1 is already in use")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent()
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # the child has its own copy
        self._proc = proc
        try:
            wait_for_port("127.0.0.1", self.port, timeout, alive=lambda: proc.poll() is None)
        except TimeoutError:
            code = proc.poll()
            self.stop()
            detail = f" (exited with {code})" if code is not None else ""
            raise RuntimeError(f"{self.name} did not start on port {self.port}{detail}") from None
        if proc.poll() is not None:
            self.stop()
            raise PortInUse(
                f"{self.name} exited with {proc.returncode}: port {self.port} is another process's"
            )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if the server has not exited within ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)

    def wait(self) -> int:
        """Wait until the server exits by itself."""
        assert self._proc is not None, "not started"
        return self._proc.wait()

    def serve(
        self,
        signals: Sequence[signal.Signals] = TERMINATION_SIGNALS,
        ready: Callable[[], None] | None = None,
    ) -> int:
        """Run in the foreground (``featflow broker``) until the server exits or is signalled.

        Each of ``signals`` is forwarded to the server, which is then stopped (a
        supervisor's SIGTERM must not orphan it). ``ready`` runs once the handlers are in
        place (the CLI prints its banner there: a signal sent on seeing the banner must
        not meet Python's default action). Returns 0 after a signal, else the server's exit
        status (128 + N if signal N killed it).
        """
        proc = self._proc
        assert proc is not None, "not started"
        received: list[int] = []
        code: int | None = None

        def forward(signum: int, _frame: FrameType | None) -> None:
            received.append(signum)
            with contextlib.suppress(OSError):
                proc.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in signals}
        try:
            if ready is not None:
                ready()
            while code is None and not received:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = proc.wait(timeout=0.2)
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if received or code is None:
            return 0
        return 128 - code if code < 0 else code

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
