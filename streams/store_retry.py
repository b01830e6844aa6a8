"""A store that does not answer stops a worker's writes, not the worker.

When Redis is down, or the disk under ``$FEATFLOW_HOME`` is full or unwritable, a worker
retries the write with a growing pause (0.1 s doubling to 5 s) until it succeeds. Nothing
is lost meanwhile: the fetch loop keeps at most one fetch's writes in flight, so it stops
reading; checkpoints wait for the writes (they never get ahead of the stores); the consumer
keeps its group membership by heartbeats. The outage is one warning when it starts, one
line when it ends, and the ``featflow_store_errors_total`` / ``featflow_store_up`` metrics.

Only unavailability is retried (``OSError``: ``features.online.OnlineUnavailable``, a full
or read-only disk); a write that fails for its data raises as before.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_PAUSE_S = 0.1
MAX_PAUSE_S = 5.0


class StoreRetry:
    """Retries writes to named stores (``"online"``, ``"offline"``) until they succeed or
    ``stopping`` is set (then the last error is raised: the checkpoint stays behind)."""

    def __init__(self, stopping: threading.Event, *, max_pause_s: float = MAX_PAUSE_S):
        self.stopping = stopping
        self.max_pause_s = max_pause_s
        self.errors: collections.Counter[str] = collections.Counter()
        self.down: dict[str, float] = {}  # store -> when its outage began (monotonic)

    def call(self, store: str, write: Callable[[], T]) -> T:
        """``write()``, retried while it raises ``OSError``."""
        pause = FIRST_PAUSE_S
        while True:
            try:
                result = write()
            except OSError as exc:
                self.errors[store] += 1
                if store not in self.down:
                    self.down[store] = time.monotonic()
                    log.warning("%s store unavailable, retrying until it answers: %s", store, exc)
                if self.stopping.wait(pause):
                    raise
                pause = min(pause * 2, self.max_pause_s)
                continue
            began = self.down.pop(store, None)
            if began is not None:
                log.warning("%s store back after %.1f s", store, time.monotonic() - began)
            return result

    def up(self) -> dict[str, bool]:
        """Whether each store that ever failed answers now."""
        return {store: store not in self.down for store in self.errors}
