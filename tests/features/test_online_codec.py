"""featflow's bulk online writer produces exactly what Feast writes and reads.

Each backend is written twice with the same random rows: once through Feast's
``write_to_online_store`` and once through featflow's writer (under another
project-equal store), then the stored bytes are compared and every value is
read back through Feast's ``get_online_features``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import redis

from featflow.settings import Settings
from features.feast_repo import FEATURE_VIEW, PROJECT, apply_repo, feast_type_name
from features.online import default_features, open_online
from features.reader import read_online
from features.rows import offline_table, online_frame
from features.spec import DEFAULT_FEATURES, FEATURE_NAMES

NAMES = list(FEATURE_NAMES)


def _rows(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    users = np.unique(rng.integers(-(2**40), 2**40, size=n))[::-1].copy()
    n = len(users)
    users[:3] = [0, 2**63 - 1, -(2**63)]
    times = rng.integers(1_600_000_000_000, 1_800_000_000_000, size=n).astype(np.int64)
    features = rng.normal(0, 1e6, size=(n, len(NAMES)))
    for j, spec in enumerate(DEFAULT_FEATURES):
        if feast_type_name(spec) == "Int64":
            features[:, j] = rng.integers(0, 10**6, size=n)
    times[2] = 1_700_000_000_000  # whole seconds: Timestamp.nanos is omitted
    features[0, :] = 0.0
    features[1, 3] = -0.0
    return users, times, features


def _sqlite_dump(settings: Settings) -> list[tuple]:
    path = settings.stores.feature_repo / "data" / "online_store.db"
    with sqlite3.connect(path) as conn:
        return sorted(
            conn.execute(
                f"SELECT entity_key, feature_name, value, value_text, event_ts, created_ts "
                f'FROM "{PROJECT}_{FEATURE_VIEW}"'
            ).fetchall()
        )


def _redis_dump(url: str) -> dict[bytes, dict[bytes, bytes]]:
    client = redis.Redis.from_url(url)
    return {key: client.hgetall(key) for key in client.scan_iter(match=b"*" + PROJECT.encode())}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_writer_matches_feast(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    users, times, features = _rows(seed=1)
    dumps = []
    for who in ("feast", "featflow"):
        online = "sqlite"
        if backend == "redis":
            url = request.getfixturevalue("redis_url")
            redis.Redis.from_url(url).flushall()
            online = url
        settings = Settings(home=tmp_path / who, online_store=online)
        store = apply_repo(settings.stores)
        if who == "feast":
            frame = online_frame(
                DEFAULT_FEATURES, entity_id=users, event_time_ms=times, features=features
            )
            store.write_to_online_store(FEATURE_VIEW, frame)
        else:
            writer = open_online(store, DEFAULT_FEATURES)
            written = writer.write(entity_id=users, event_time_ms=times, features=features)
            assert written == len(users)

        got = read_online(settings.stores, users.tolist())
        assert got["user_id"].tolist() == users.tolist()
        expected = features.copy()
        np.testing.assert_array_equal(got[NAMES].to_numpy(float), expected)
        dumps.append(_sqlite_dump(settings) if backend == "sqlite" else _redis_dump(online))
    assert dumps[0] == dumps[1]


def _settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    online = "sqlite"
    if backend == "redis":
        online = request.getfixturevalue("redis_url")
        redis.Redis.from_url(online).flushall()
    return Settings(home=tmp_path / "home", online_store=online)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("feature", NAMES)
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_writers_refuse_non_finite_features(
    backend: str, feature: str, value: float, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = _settings(backend, tmp_path, request)
    store = apply_repo(settings.stores)
    users, times, features = _rows(seed=2, n=4)
    features[1, NAMES.index(feature)] = value
    message = f"refusing to store {feature} = {value}"
    with pytest.raises(ValueError, match=message):
        open_online(store, DEFAULT_FEATURES).write(
            entity_id=users, event_time_ms=times, features=features
        )
    with pytest.raises(ValueError, match=message):
        offline_table(
            DEFAULT_FEATURES,
            event_id=[str(u) for u in users],
            entity_id=users,
            event_time_ms=times,
            features=features,
            partition=np.zeros(len(users), np.int32),
            offset=np.arange(len(users)),
        )
    assert read_online(settings.stores, users.tolist())[NAMES].isna().all(axis=None)


FLOAT_FEATURES = [s.name for s in DEFAULT_FEATURES if feast_type_name(s) == "Float64"]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("feature", FLOAT_FEATURES)  # an Int64 value cannot be inf anywhere
def test_a_non_finite_row_from_another_writer_is_served_as_missing(
    backend: str, feature: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Feast's own write path stores inf; featflow's reader never serves it (or null)."""
    store = apply_repo(_settings(backend, tmp_path, request).stores)
    users, times, features = _rows(seed=2, n=4)
    bad = features.copy()
    bad[1, NAMES.index(feature)] = np.inf
    frame = online_frame(DEFAULT_FEATURES, entity_id=users, event_time_ms=times, features=bad)
    store.write_to_online_store(FEATURE_VIEW, frame)
    values, found = open_online(store, DEFAULT_FEATURES).read(users.tolist())
    assert found.tolist() == [True, False, True, True]
    assert np.isfinite(values).all()
    np.testing.assert_array_equal(values[1], default_features(DEFAULT_FEATURES))
    np.testing.assert_array_equal(values[[0, 2, 3]], features[[0, 2, 3]])
