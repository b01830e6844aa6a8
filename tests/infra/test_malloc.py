"""The long-running services' malloc arenas (``infra.malloc``), counted by glibc itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_PROBE = """
import ctypes, sys, threading
from infra.malloc import limit_arenas
took = limit_arenas() if sys.argv[1] == "limit" else None
together = threading.Barrier(6)  # all alive at once: an exited thread's arena is reused
def work():
    blocks = [bytearray(20_000) for _ in range(50)]  # malloc'd (not pymalloc, not mmap)
    together.wait()
    del blocks
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(out))
libc.fclose(ctypes.c_void_p(out))
print(took)
"""


def _heaps(tmp_path: Path, mode: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    report = tmp_path / f"{mode}.xml"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, str(report)],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return report.read_text().count("<heap nr="), done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_services_keep_two_arenas_unless_told_otherwise(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    plain, _ = _heaps(tmp_path, "plain", env)
    limited, took = _heaps(tmp_path, "limit", env)
    assert plain > 2  # each new thread got an arena of its own ...
    assert (limited, took) == (2, "True")  # ... and with the limit they share two
    # an operator's MALLOC_ARENA_MAX wins (glibc reads it; the service does not override it)
    told, took = _heaps(tmp_path, "limit", {**env, "MALLOC_ARENA_MAX": "3"})
    assert (told, took) == (3, "False")
