"""glibc's malloc in the long-running services: fewer arenas, so RSS follows what is used.

glibc gives each thread that contends for the heap an arena of its own, up to 8 per core,
and an arena keeps the pages freed in it. A worker's threads (checkpoint encoding, part
files, the merchant fetches) allocate and free large numpy buffers in turn, so every arena
came to hold its own high-water mark: in the 10-minute soak (``benchmarks/stream_soak.py``)
the worker's RSS rose 1.12x from the middle third to the last with the default, 1.06x with
two arenas, and was ~55 MiB lower. Two arenas is the setting Python services commonly run
with (``MALLOC_ARENA_MAX=2``); an operator's own ``MALLOC_ARENA_MAX`` wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``count`` for this process (arenas made from now on);
    whether it took effect: False without glibc or where ``MALLOC_ARENA_MAX`` is set."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_ARENA_MAX, count))
