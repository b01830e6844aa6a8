"""Which partition of a topic a user's records land on: what the Kafka clients' default
partitioner does with the key featflow's producers use (the decimal ``user_id``).

A backfill needs it to reproduce a partition's clock (``features.spec.Expiry``): the newest
event time the partition has seen is a fact of the partition, not of the user. The hash is
Kafka's murmur2 (the Java client's, which kafka-python and aiokafka copy), over the decimal
digits of each id, in a Numba loop: a backfill of millions of users pays milliseconds, and
imports no Kafka client (``tests/infra/test_partitioner.py`` checks it against
kafka-python's own).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_M = np.uint64(0x5BD1E995)
_MASK = np.uint64(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def _murmur2_decimal(value: int) -> int:
    """Kafka's murmur2 of ``str(value).encode()`` (32 bits, unsigned)."""
    digits = np.empty(21, dtype=np.uint8)
    n = 0
    v = -value if value < 0 else value
    while True:
        digits[n] = 48 + v % 10
        n += 1
        v //= 10
        if v == 0:
            break
    if value < 0:
        digits[n] = 45  # "-"
        n += 1
    data = digits[:n][::-1].copy()
    h = np.uint64(0x9747B28C) ^ np.uint64(n)
    for i in range(0, n - n % 4, 4):
        k = np.uint64(data[i]) | (np.uint64(data[i + 1]) << np.uint64(8))
        k |= (np.uint64(data[i + 2]) << np.uint64(16)) | (np.uint64(data[i + 3]) << np.uint64(24))
        k = (k * _M) & _MASK
        k ^= k >> np.uint64(24)
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = n - n % 4
    left = n % 4
    if left == 3:
        h ^= np.uint64(data[tail + 2]) << np.uint64(16)
    if left >= 2:
        h ^= np.uint64(data[tail + 1]) << np.uint64(8)
    if left >= 1:
        h ^= np.uint64(data[tail])
        h = (h * _M) & _MASK
    h ^= h >> np.uint64(13)
    h = (h * _M) & _MASK
    h ^= h >> np.uint64(15)
    return int(h)


@njit(cache=True, nogil=True)
def _partitions(users: np.ndarray, partitions: int, out: np.ndarray) -> None:
    for i in range(users.shape[0]):
        out[i] = (_murmur2_decimal(users[i]) & 0x7FFFFFFF) % partitions


def partition_of(user_ids: np.ndarray, partitions: int) -> np.ndarray:
    """The partition (0..``partitions``-1) of each user's records."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    users = np.ascontiguousarray(user_ids, dtype=np.int64)
    out = np.empty(len(users), dtype=np.int64)
    _partitions(users, partitions, out)
    return out


def partition_clocks(partition: np.ndarray, times_ms: np.ndarray) -> np.ndarray:
    """Each event's partition clock: the newest time among the events of its partition up to
    and including it (``partition`` and ``times_ms`` in arrival order)."""
    clocks = np.empty(len(times_ms), dtype=np.int64)
    for p in np.unique(partition).tolist():
        rows = np.flatnonzero(partition == p)
        clocks[rows] = np.maximum.accumulate(times_ms[rows])
    return clocks
