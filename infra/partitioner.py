"""Which partition of a topic a user's records land on: what the Kafka clients' default
partitioner does with the key featflow's producers use (the decimal ``user_id``).

A backfill needs it to reproduce a partition's clock (``features.spec.Expiry``): the newest
event time the partition has seen is a fact of the partition, not of the user. The hash is
the client's own (kafka-python's ``murmur2``, the Java client's), computed once per user.
"""

from __future__ import annotations

import numpy as np
from kafka.partitioner.default import murmur2


def partition_of(user_ids: np.ndarray, partitions: int) -> np.ndarray:
    """The partition (0..``partitions``-1) of each user's records."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    users, inverse = np.unique(np.asarray(user_ids, dtype=np.int64), return_inverse=True)
    each = np.fromiter(
        ((murmur2(str(u).encode()) & 0x7FFFFFFF) % partitions for u in users.tolist()),
        dtype=np.int64,
        count=len(users),
    )
    return each[inverse]


def partition_clocks(partition: np.ndarray, times_ms: np.ndarray) -> np.ndarray:
    """Each event's partition clock: the newest time among the events of its partition up to
    and including it (``partition`` and ``times_ms`` in arrival order)."""
    clocks = np.empty(len(times_ms), dtype=np.int64)
    for p in np.unique(partition).tolist():
        rows = np.flatnonzero(partition == p)
        clocks[rows] = np.maximum.accumulate(times_ms[rows])
    return clocks
