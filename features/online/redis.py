"""Feast's Redis online store: a hash per entity key + project, murmur3 fields, ``_ts``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
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
    from redis import Redis


@contextlib.contextmanager
def _answering() -> Iterator[None]:
    """Redis not answering (refused, reset, timed out) as ``OnlineUnavailable``."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise OnlineUnavailable(f"redis: {exc}") from exc


def _no_retries(client: Redis) -> None:
    """One attempt per command: redis-py retries a timed-out command 3 times with backoff by
    default (a PING took 10.6 s against a hung server with a 1 s timeout); the worker retries
    with its own backoff and ``/predict`` must answer 503 within the timeout."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = client.connection_pool
    pool.connection_kwargs["retry"] = Retry(NoBackoff(), 0)
    pool.disconnect()  # connections made before this one took the default


class RedisOnline:
    """Pipelined HSETs packed by Numba for writes; HMGETs for reads."""

    def __init__(
        self,
        store: FeatureStore,
        specs: Sequence[FeatureSpec],
        view: View,
        also: Sequence[View] = (),
    ):
        from feast.infra.online_stores.redis import RedisOnlineStore

        self.specs = tuple(specs)
        self._client = RedisOnlineStore()._get_client(store.config.online_store)
        _no_retries(self._client)
        self._join_key = view.join_key
        self._fields = codec.redis_field_keys(view.name, self.specs)
        self._suffix = PROJECT.encode()
        # reads: this view's fields, then those of ``also`` (an entity's views share its hash)
        self._read_fields = self._fields + [
            f for v in also for f in codec.redis_field_keys(v.name, v.specs)
        ]
        self._defaults = default_features([*self.specs, *(s for v in also for s in v.specs)])
        self._packer = codec.RedisHsetPacker(
            self.specs, self._fields, f"_ts:{view.name}".encode(), self._suffix, view.join_key
        )
        one = np.zeros(1, dtype=np.int64)
        self._packer.pack(one, one, np.zeros((1, len(self.specs))))  # compile or load now

    def write(
        self, *, entity_id: np.ndarray, event_time_ms: np.ndarray, features: np.ndarray
    ) -> int:
        """One HSET per entity in one round trip; returns the rows written."""
        if len(entity_id) == 0:
            return 0
        require_finite(self.specs, features)
        payload = self._packer.pack(entity_id, event_time_ms, features)
        pool = self._client.connection_pool
        with _answering():
            conn = pool.get_connection()
            try:
                conn.send_packed_command([payload])
                for _ in range(len(entity_id)):
                    conn.read_response()  # raises on an error reply
            except BaseException:
                conn.disconnect()  # unread replies would poison the next command
                raise
            finally:
                pool.release(conn)
        return len(entity_id)

    def read(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(features [n, F] with defaults for unknown entities, found [n])."""
        keys = codec.entity_keys(np.asarray(ids, dtype=np.int64), self._join_key)
        with _answering():
            if len(keys) == 1:
                rows = [self._client.hmget(keys[0] + self._suffix, self._read_fields)]
            else:
                with self._client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hmget(key + self._suffix, self._read_fields)
                    rows = pipe.execute()
        out = np.tile(self._defaults, (len(keys), 1))
        found = np.zeros(len(keys), dtype=bool)
        for i, row in enumerate(rows):
            if row and row[0] is not None:
                found[i] = True
                out[i] = [
                    number(b) if b is not None else d
                    for b, d in zip(row, self._defaults, strict=True)
                ]
        only_usable(out, found, self._defaults)
        return out, found

    def unavailable(self) -> str | None:
        """Why Redis does not answer PING, or None when it does."""
        try:
            with _answering():
                self._client.ping()
        except OnlineUnavailable as exc:
            return str(exc)
        except Exception as exc:  # e.g. a password refused: not ready either
            return f"redis: {exc}"
        return None
