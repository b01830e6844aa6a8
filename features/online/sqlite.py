"""Feast's SQLite online store: table ``<project>_<view>``, one row per (entity, feature)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from features import online_codec as codec
from features.feast_repo import PROJECT
from features.online import OnlineUnavailable, default_features, number, only_usable
from features.rows import require_finite
from features.spec import FeatureSpec
from features.views import View

if TYPE_CHECKING:
    from feast import FeatureStore

_EPOCH = datetime(1970, 1, 1)  # naive UTC, as Feast's SQLite store keeps event_ts


class SqliteOnline:
    """Upserts and reads Feast's SQLite rows; a connection per thread for reads."""

    def __init__(
        self,
        store: FeatureStore,
        specs: Sequence[FeatureSpec],
        view: View,
        also: Sequence[View] = (),
    ):
        from feast.infra.online_stores.sqlite import SqliteOnlineStore, _table_id

        self.specs = tuple(specs)
        self._join_key = view.join_key
        table = _table_id(PROJECT, store.get_feature_view(view.name))
        self._path = SqliteOnlineStore._get_db_path(store.config)
        self._upsert = (
            f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts, '
            "created_ts) VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT(entity_key, feature_name) "
            "DO UPDATE SET value = excluded.value, value_text = excluded.value_text, "
            "event_ts = excluded.event_ts, created_ts = excluded.created_ts"
        )
        # reads: this view's table, then those of ``also``, each feature in its column
        read_specs = [*self.specs, *(s for v in also for s in v.specs)]
        self._selects = [
            f'SELECT feature_name, value FROM "{_table_id(PROJECT, store.get_feature_view(v))}" '
            "WHERE entity_key = ?"
            for v in [view.name, *(v.name for v in also)]
        ]
        self._columns = [{s.name: j for j, s in enumerate(self.specs)}]
        start = len(self.specs)
        for v in also:
            self._columns.append({s.name: start + j for j, s in enumerate(v.specs)})
            start += len(v.specs)
        self._defaults = default_features(read_specs)
        self._local = threading.local()  # sqlite connections are per thread

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, check_same_thread=False, timeout=30)
            self._local.conn = conn
        return conn

    def write(
        self, *, entity_id: np.ndarray, event_time_ms: np.ndarray, features: np.ndarray
    ) -> int:
        """Upsert one row per entity and feature; returns the rows written."""
        if len(entity_id) == 0:
            return 0
        require_finite(self.specs, features)
        keys = codec.entity_keys(entity_id, self._join_key)
        # Naive UTC datetimes, stored through the sqlite3 adapter Feast registers.
        stamps = [_EPOCH + timedelta(milliseconds=ms) for ms in event_time_ms.tolist()]
        rows = []
        for j, spec in enumerate(self.specs):
            values, texts = codec.encode_column(spec, features[:, j])
            name = spec.name
            rows.extend(zip(keys, [name] * len(keys), values, texts, stamps, strict=True))
        conn = self._conn()
        try:
            with conn:
                conn.executemany(self._upsert, rows)
        except sqlite3.OperationalError as exc:  # locked past the timeout, disk full, I/O
            raise OnlineUnavailable(f"sqlite: {exc}") from exc
        return len(entity_id)

    def read(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(features [n, F] with defaults for unknown entities, found [n])."""
        keys = codec.entity_keys(np.asarray(ids, dtype=np.int64), self._join_key)
        out = np.tile(self._defaults, (len(keys), 1))
        found = np.zeros(len(keys), dtype=bool)
        conn = self._conn()
        for i, key in enumerate(keys):
            for select, columns in zip(self._selects, self._columns, strict=True):
                for name, blob in conn.execute(select, (key,)):
                    j = columns.get(name)
                    if j is not None:
                        out[i, j] = number(blob)
                        found[i] = True
        only_usable(out, found, self._defaults)
        return out, found

    def unavailable(self) -> str | None:
        """Why the database file does not answer a query, or None when it does."""
        try:
            self._conn().execute("SELECT 1")
        except sqlite3.Error as exc:
            return f"sqlite: {exc}"
        return None
