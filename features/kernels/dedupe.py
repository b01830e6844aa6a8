"""Duplicate events: a producer's retry of an event it already sent, at a new offset.

The rule (the same in stream, backfill, shards and the serving replica, so their rows stay
equal): an event whose ``(entity, event_id)`` equals that of an earlier event the entity
accepted, while that earlier event is not yet late (its time within the allowed lateness
of the entity's newest event time), is a duplicate: it changes no state and gets no row.
A copy that arrives after that is late anyway (a retry carries its original's time), so
the driver refuses it: no copy is ever counted twice.

Each entity's recent ids are kept as 64-bit keys (FNV-1a of the id, mixed with the entity
id) in two typed dicts: key -> event time and key -> entity. Only keys of events within
lateness of their entity's newest time can match again; :func:`evict` drops the others,
which changes no verdict, so when it runs (memory management) does not matter.
Two different ids share a key with probability ~2^-64 per pair of one entity's events.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.typed import Dict

from features.kernels.layout import NO_TIME, TMAX

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def id_keys(entities: np.ndarray, offsets: np.ndarray, data: np.ndarray, out: np.ndarray) -> None:
    """``out[i]``: the key of (``entities[i]``, the i-th string of an Arrow string array's
    ``offsets`` and ``data`` buffers)."""
    for i in range(entities.shape[0]):
        h = _FNV_OFFSET
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * _FNV_PRIME
        h ^= np.uint64(entities[i]) * _MIX
        out[i] = np.int64(h)


@njit(cache=True, nogil=True)
def mark_duplicates(
    ent: np.ndarray,
    entities: np.ndarray,
    keys: np.ndarray,
    times: np.ndarray,
    seg: np.ndarray,
    lateness_ms: int,
    idle_ms: int,
    seen_t,
    seen_e,
    duplicate: np.ndarray,
) -> None:
    """Mark the duplicates of a batch (in arrival order) and remember the other events'
    keys. ``ent``: dense entity indexes, ``seg``: the entity rows *before* the batch (each
    entity's newest time is followed through the batch in ``batch_tmax``),
    ``entities``: raw entity ids (kept with each key, for :func:`evict`); ``idle_ms`` >= 0:
    an event that far after its entity's newest finds it afresh (``Config.idle_ms``), so it
    is no copy of anything."""
    batch_tmax = Dict.empty(key_type=types.int64, value_type=types.int64)  # 35 us from Python
    for i in range(ent.shape[0]):
        e = ent[i]
        tmax = batch_tmax.get(e, seg[e, TMAX])
        t = times[i]
        if tmax != NO_TIME and idle_ms >= 0 and t - tmax > idle_ms:
            duplicate[i] = False
            seen_t[keys[i]] = t
            seen_e[keys[i]] = entities[i]
            batch_tmax[e] = t
            continue
        if tmax != NO_TIME and t < tmax - lateness_ms:
            duplicate[i] = False  # late: the driver refuses it, copy or not
            continue
        k = keys[i]
        before = seen_t.get(k, NO_TIME)
        if before != NO_TIME and (tmax == NO_TIME or before >= tmax - lateness_ms):
            duplicate[i] = True
            continue
        duplicate[i] = False
        seen_t[k] = t
        seen_e[k] = entities[i]
        if tmax == NO_TIME or t > tmax:
            batch_tmax[e] = t


@njit(cache=True, nogil=True)
def evict(seen_t, seen_e, table, seg: np.ndarray, lateness_ms: int) -> None:
    """Drop the keys no event can match any more: older than their entity's newest time
    minus the lateness (a copy of them would be late), or of an entity the state no longer
    holds (dropped idle: its next event finds it afresh)."""
    dead = np.empty(len(seen_t), dtype=np.int64)
    n = 0
    for k, t in seen_t.items():
        entity = seen_e[k]
        if entity not in table:
            dead[n] = k
            n += 1
            continue
        tmax = seg[table[entity], TMAX]
        if tmax != NO_TIME and t < tmax - lateness_ms:
            dead[n] = k
            n += 1
    for i in range(n):
        del seen_t[dead[i]]
        del seen_e[dead[i]]


@njit(cache=True)
def gather(seen_t, seen_e, keys: np.ndarray, times: np.ndarray, entities: np.ndarray) -> None:
    """Copy the recent ids out (for a snapshot); the arrays have ``len(seen_t)`` rows."""
    for i, (k, t) in enumerate(seen_t.items()):
        keys[i] = k
        times[i] = t
        entities[i] = seen_e[k]


@njit(cache=True)
def fill(seen_t, seen_e, keys: np.ndarray, times: np.ndarray, entities: np.ndarray) -> None:
    """Put a snapshot's recent ids back."""
    for i in range(keys.shape[0]):
        seen_t[keys[i]] = times[i]
        seen_e[keys[i]] = entities[i]
