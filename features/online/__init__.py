"""The online store: each user's newest feature row, written and read in Feast's own layout.

Rows are keyed by the view's entity (users, or merchants for the merchant views).
One backend class per store holds both directions (as Feast's online stores do):
:class:`features.online.sqlite.SqliteOnline` and :class:`features.online.redis.RedisOnline`.
The worker writes; the HTTP service reads; tests read everything back through Feast's own
``get_online_features`` too.

Writes: callers pass only rows that hold each user's newest event time (the window state
knows which), so a row is never overwritten by an older event; a partition has one owner at
a time, so there is one writer per user. The bytes come from :mod:`features.online_codec`,
several times faster than Feast's ``write_to_online_store``.

Reads: Feast's ``get_online_features`` costs about a millisecond per call in Python
overhead, the whole latency budget of ``/predict``; the backends fetch the same row and
parse the same ``ValueProto`` bytes. A stored non-finite value (another writer's:
featflow's refuse them) reads as missing, never as ``null``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from features.spec import FeatureSpec
from features.views import USER, View

if TYPE_CHECKING:
    from feast import FeatureStore


class OnlineUnavailable(ConnectionError):
    """The online store did not answer (down, unreachable, timed out, locked): a worker
    retries the write, ``/predict`` answers 503. Not raised for bad data."""


class OnlineStore(Protocol):
    """What the worker and the service need of an online store."""

    def write(
        self, *, entity_id: np.ndarray, event_time_ms: np.ndarray, features: np.ndarray
    ) -> int:
        """Upsert one row per entity (all finite, else ``ValueError``); returns rows written.
        ``OnlineUnavailable`` if the store does not answer."""
        ...

    def read(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(features [n, F], all finite, with defaults for unknown entities; found [n] bool).
        ``OnlineUnavailable`` if the store does not answer."""
        ...

    def unavailable(self) -> str | None:
        """Why the store does not answer now, or None when it does (``/health``)."""
        ...


def open_online(
    store: FeatureStore,
    specs: Sequence[FeatureSpec],
    *,
    view: View = USER,
    also: Sequence[View] = (),
) -> OnlineStore:
    """The backend of the Feast repo's configured online store, for ``view``'s rows (whose
    features are ``specs``: a test's own list for the user view). Reads return the features
    of the views in ``also`` after them, for the same entity (Redis: in the same HMGET)."""
    kind = store.config.online_store.type
    if kind == "sqlite":
        from features.online.sqlite import SqliteOnline

        return SqliteOnline(store, specs, view, also)
    if kind == "redis":
        from features.online.redis import RedisOnline

        return RedisOnline(store, specs, view, also)
    raise ValueError(f"unsupported online store {kind!r}")


def default_features(specs: Sequence[FeatureSpec]) -> np.ndarray:
    """A user with no history: zero counts and sums, -1.0 seconds since the last event."""
    return np.array([-1.0 if s.agg == "since_last" else 0.0 for s in specs], dtype=np.float64)


def number(blob: bytes) -> float:
    """The number in a serialized Feast ``ValueProto`` (NaN when it holds none)."""
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value.FromString(blob)
    kind = value.WhichOneof("val")
    return float(getattr(value, kind)) if kind else float("nan")


def only_usable(out: np.ndarray, found: np.ndarray, defaults: np.ndarray) -> None:
    """A stored row with a non-finite value is treated as missing, in place."""
    bad = found & ~np.isfinite(out).all(axis=1)
    if bad.any():
        out[bad] = defaults
        found[bad] = False
