"""Online store writer: each user's newest feature row, in Feast's own format.

Callers pass only rows that hold each user's newest event time (the window
state knows which), so a row is never overwritten by an older event; a
partition has one owner at a time, so there is one writer per user. The bytes
come from :mod:`features.online_codec`, several times faster than Feast's
``write_to_online_store``; tests read everything back through Feast.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import numpy as np

from features import online_codec as codec
from features.feast_repo import FEATURE_VIEW, PROJECT
from features.rows import require_finite
from features.spec import FeatureSpec

if TYPE_CHECKING:
    from feast import FeatureStore

_EPOCH = datetime(1970, 1, 1)  # naive UTC, as Feast's SQLite store keeps event_ts


class OnlineWriter(Protocol):
    def write(
        self, *, user_id: np.ndarray, event_time_ms: np.ndarray, features: np.ndarray
    ) -> int: ...


def open_online_writer(store: FeatureStore, specs: Sequence[FeatureSpec]) -> OnlineWriter:
    """The writer for the store's configured online store."""
    kind = store.config.online_store.type
    if kind == "sqlite":
        return SqliteOnlineWriter(store, specs)
    if kind == "redis":
        return RedisOnlineWriter(store, specs)
    raise ValueError(f"unsupported online store {kind!r}")


class SqliteOnlineWriter:
    """Upserts into Feast's SQLite table ``<project>_<view>`` (one row per feature)."""

    def __init__(self, store: FeatureStore, specs: Sequence[FeatureSpec]):
        from feast.infra.online_stores.sqlite import SqliteOnlineStore, _table_id

        self.specs = tuple(specs)
        view = store.get_feature_view(FEATURE_VIEW)
        table = _table_id(PROJECT, view)
        path = SqliteOnlineStore._get_db_path(store.config)
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._sql = (
            f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts, '
            "created_ts) VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT(entity_key, feature_name) "
            "DO UPDATE SET value = excluded.value, value_text = excluded.value_text, "
            "event_ts = excluded.event_ts, created_ts = excluded.created_ts"
        )

    def write(self, *, user_id: np.ndarray, event_time_ms: np.ndarray, features: np.ndarray) -> int:
        if len(user_id) == 0:
            return 0
        require_finite(self.specs, features)
        keys = codec.entity_keys(user_id)
        # Naive UTC datetimes, stored through the sqlite3 adapter Feast registers.
        stamps = [_EPOCH + timedelta(milliseconds=ms) for ms in event_time_ms.tolist()]
        rows = []
        for j, spec in enumerate(self.specs):
            values, texts = codec.encode_column(spec, features[:, j])
            name = spec.name
            rows.extend(zip(keys, [name] * len(keys), values, texts, stamps, strict=True))
        with self._conn:
            self._conn.executemany(self._sql, rows)
        return len(user_id)


class RedisOnlineWriter:
    """HSETs into Feast's Redis layout: key = entity key + project, murmur3 fields, ``_ts``."""

    def __init__(self, store: FeatureStore, specs: Sequence[FeatureSpec]):
        from feast.infra.online_stores.redis import RedisOnlineStore

        self.specs = tuple(specs)
        self._client = RedisOnlineStore()._get_client(store.config.online_store)
        self._packer = codec.RedisHsetPacker(
            self.specs,
            codec.redis_field_keys(FEATURE_VIEW, self.specs),
            f"_ts:{FEATURE_VIEW}".encode(),
            PROJECT.encode(),
        )
        one = np.zeros(1, dtype=np.int64)
        self._packer.pack(one, one, np.zeros((1, len(self.specs))))  # compile or load now

    def write(self, *, user_id: np.ndarray, event_time_ms: np.ndarray, features: np.ndarray) -> int:
        if len(user_id) == 0:
            return 0
        require_finite(self.specs, features)
        payload = self._packer.pack(user_id, event_time_ms, features)
        pool = self._client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([payload])
            for _ in range(len(user_id)):
                conn.read_response()  # raises on an error reply
        except BaseException:
            conn.disconnect()  # unread replies would poison the next command
            raise
        finally:
            pool.release(conn)
        return len(user_id)
