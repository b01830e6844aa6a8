"""Arena management: allocation of a :class:`KernelState`, id mapping, compaction, the drop
of idle entities, gather for snapshots and restore of promoted entities.

Blocks relocate inside :func:`features.kernels.driver.process_events` (a full block moves to
the arena end with 1.5x capacity); the Python layer (``features/state.py``) calls
:func:`compact_arena` and grows the arena when the kernel reports it full.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.typed import Dict, List

from features.kernels.incremental import demote, promote
from features.kernels.layout import (
    BASE,
    CAP,
    EVICTED,
    HEAD,
    LEN,
    META_GARBAGE,
    META_SIZE,
    NO_TIME,
    NONE,
    SEG_COLS,
    TMAX,
    XSLOT,
    EncodedSpecs,
    KernelState,
    Tuning,
)

_DIST_KEY = types.UniTuple(types.int64, 2)  # (entity, merchant)
_XI_T = types.Array(types.int64, 1, "C")
_XF_T = types.Array(types.float64, 1, "C")
_XR_T = types.Array(types.int32, 2, "C")


def new_seg(n: int) -> np.ndarray:
    """Per-entity rows for ``n`` unseen entities."""
    seg = np.zeros((n, SEG_COLS), dtype=np.int64)
    seg[:, TMAX] = NO_TIME
    seg[:, EVICTED] = NO_TIME
    seg[:, XSLOT] = NONE
    return seg


@njit(cache=True)
def new_id_table():  # -> numba.typed.Dict[int64, int64]
    """Empty raw-id -> dense-index table (built in nopython so its code is disk-cached)."""
    return Dict.empty(key_type=types.int64, value_type=types.int64)


@njit(cache=True)
def new_dist_map():  # -> numba.typed.Dict[(int64, int64), int64]
    """Empty (entity, merchant) -> logical row of the merchant's last occurrence."""
    return Dict.empty(key_type=_DIST_KEY, value_type=types.int64)


@njit(cache=True)
def new_side():  # -> (xi, xf, xr, free slots) numba typed lists
    """Empty side storage for promoted entities."""
    return (
        List.empty_list(_XI_T),
        List.empty_list(_XF_T),
        List.empty_list(_XR_T),
        List.empty_list(types.int64),
    )


def new_state(n_entities: int, arena_size: int, n_ewm: int) -> KernelState:
    """An empty state with room for ``n_entities`` entities, ``arena_size`` history rows and
    ``n_ewm`` ewm specs."""
    xi, xf, xr, xfree = new_side()
    return KernelState(
        table=new_id_table(),
        keys=np.empty(n_entities, dtype=np.int64),
        seg=new_seg(n_entities),
        ewm=np.zeros((n_entities, 2 * n_ewm), dtype=np.float64),
        arena_t=np.empty(arena_size, dtype=np.int64),
        arena_a=np.empty(arena_size, dtype=np.float64),
        arena_m=np.empty(arena_size, dtype=np.int64),
        meta=np.zeros(META_SIZE, dtype=np.int64),
        dmap=new_dist_map(),
        cmap=new_dist_map(),
        xi=xi,
        xf=xf,
        xr=xr,
        xfree=xfree,
    )


def with_entities(st: KernelState, n_entities: int) -> KernelState:
    """``st`` with the per-entity arrays grown to ``n_entities`` (contents kept)."""
    cap = st.seg.shape[0]
    seg = new_seg(n_entities)
    seg[:cap] = st.seg
    ewm = np.zeros((n_entities, st.ewm.shape[1]), dtype=np.float64)
    ewm[:cap] = st.ewm
    keys = np.empty(n_entities, dtype=np.int64)
    keys[:cap] = st.keys
    return st._replace(seg=seg, ewm=ewm, keys=keys)


# ---------------------------------------------------------------------------- id mapping


@njit(cache=True, nogil=True)  # shards run in threads (features/shards.py)
def assign_dense_ids(
    table, user_ids: np.ndarray, keys: np.ndarray, n_entities: int, out: np.ndarray
) -> int:
    """Map raw ids to dense indices, appending unseen ids; returns the new entity count.

    ``keys`` (dense index -> raw id) must have room for ``n_entities + len(user_ids)``.
    """
    for i in range(user_ids.shape[0]):
        u = user_ids[i]
        idx = table.get(u, -1)
        if idx < 0:
            idx = n_entities
            table[u] = idx
            keys[idx] = u
            n_entities += 1
        out[i] = idx
    return n_entities


@njit(cache=True)
def fill_id_table(table, keys: np.ndarray) -> None:
    """Rebuild the id table from dense-ordered keys (restore path)."""
    for i in range(keys.shape[0]):
        table[keys[i]] = i


# ---------------------------------------------------------------------------- maintenance


@njit(cache=True, nogil=True)  # shards run in threads (features/shards.py)
def compact_arena(
    st: KernelState,
    order: np.ndarray,  # int64: entities with CAP > 0, by ascending BASE
    new_cap: np.ndarray,  # int64[E]: new capacity, must be <= CAP (in-place sliding)
) -> int:
    """Slide live blocks to the arena front in place; returns the new used size.

    In place is safe because blocks are visited by ascending base and never grow, so every
    destination is <= its source (no second arena => peak memory stays ~1x). Side storage
    is indexed by logical row numbers, so it does not care where rows live.
    """
    return _compact(st.seg, order, new_cap, st.arena_t, st.arena_a, st.arena_m)


@njit(cache=True)
def _compact(seg, order, new_cap, arena_t, arena_a, arena_m) -> int:
    """:func:`compact_arena` on the arrays (loops over arrays bound from tuple fields ran
    slower, see driver.py)."""
    cursor = 0
    for r in range(order.shape[0]):
        e = order[r]
        src = seg[e, BASE] + seg[e, HEAD]
        length = seg[e, LEN]
        for j in range(length):
            arena_t[cursor + j] = arena_t[src + j]
            arena_a[cursor + j] = arena_a[src + j]
            arena_m[cursor + j] = arena_m[src + j]
        seg[e, BASE] = cursor
        seg[e, HEAD] = 0
        seg[e, CAP] = new_cap[e]
        cursor += new_cap[e]
    return cursor


@njit(cache=True)
def drop_entities(
    st: KernelState,
    enc: EncodedSpecs,
    gone: np.ndarray,  # bool[n]: the entities to drop
    n: int,
    moved_from: np.ndarray,  # int64[gone.sum()]: out, the dense index each move came from ...
    moved_to: np.ndarray,  # ... and went to (the first ``returned`` moves are real)
) -> int:
    """Drop the entities ``gone`` in place; returns the number of moves.

    Each dropped entity leaves the id table, gives its side storage back (``demote``: its
    distinct-merchant entries leave the maps) and its block becomes arena garbage (the next
    compaction reclaims it). Then the survivors with the highest indexes fill the holes, so
    entities ``0..n - gone.sum() - 1`` are the survivors: one scan of the flags, then
    O(dropped + moved) work, where rebuilding the state without them copied all of it. A
    moved promoted entity's map entries are re-keyed in one pass over the maps (they are
    keyed by dense index); its running sums move with its slot, so no value changes by a
    rounding.
    """
    seg, keys, ewm = st.seg, st.keys, st.ewm
    for e in range(n):
        if gone[e]:
            if seg[e, XSLOT] >= 0:
                demote(e, enc, st)
            st.meta[META_GARBAGE] += seg[e, CAP]
            del st.table[keys[e]]
    kept = n - int(gone.sum())
    moves = 0
    src = n - 1
    renumber = Dict.empty(key_type=types.int64, value_type=types.int64)  # promoted movers
    for hole in range(kept):
        if not gone[hole]:
            continue
        while gone[src]:
            src -= 1
        seg[hole, :] = seg[src, :]
        ewm[hole, :] = ewm[src, :]
        keys[hole] = keys[src]
        st.table[keys[hole]] = hole
        if seg[hole, XSLOT] >= 0:
            renumber[src] = hole
        moved_from[moves] = src
        moved_to[moves] = hole
        moves += 1
        src -= 1
    for e in range(kept, n):  # the tail is unseen again
        seg[e, :] = 0
        seg[e, TMAX] = NO_TIME
        seg[e, EVICTED] = NO_TIME
        seg[e, XSLOT] = NONE
        ewm[e, :] = 0.0
    if len(renumber) > 0:
        _rekey(st.dmap, renumber, 1)
        _rekey(st.cmap, renumber, enc.wlay.shape[0])
    return moves


@njit(cache=True)
def _rekey(dist_map, renumber, stride: int) -> None:
    """Move the (entity * stride + u, merchant) entries of the renumbered entities."""
    old = []
    for key in dist_map:
        if key[0] // stride in renumber:
            old.append(key)
    values = [dist_map.pop(key) for key in old]
    for i in range(len(old)):
        e, u = old[i][0] // stride, old[i][0] % stride
        dist_map[(renumber[e] * stride + u, old[i][1])] = values[i]


@njit(cache=True)
def gather_live(
    st: KernelState,
    n_entities: int,
    out_t: np.ndarray,
    out_a: np.ndarray,
    out_m: np.ndarray,
) -> None:
    """Copy live rows of entities 0..n-1 back to back (snapshot path)."""
    seg, arena_t, arena_a, arena_m = st.seg, st.arena_t, st.arena_a, st.arena_m
    cursor = 0
    for e in range(n_entities):
        src = seg[e, BASE] + seg[e, HEAD]
        for j in range(seg[e, LEN]):
            out_t[cursor + j] = arena_t[src + j]
            out_a[cursor + j] = arena_a[src + j]
            out_m[cursor + j] = arena_m[src + j]
        cursor += seg[e, LEN]


@njit(cache=True)
def gather_sums(st: KernelState, promoted: np.ndarray, out: np.ndarray) -> None:
    """Running sums of the promoted entities (in ``promoted`` order) into out (snapshot)."""
    for r in range(promoted.shape[0]):
        out[r, :] = st.xf[st.seg[promoted[r], XSLOT]]


@njit(cache=True)
def restore_promoted(
    promoted: np.ndarray,  # int64 entity indices
    sums: np.ndarray,  # float64[len(promoted), n_xf]
    enc: EncodedSpecs,
    tuning: Tuning,
    st: KernelState,
) -> None:
    """Restore path: promote the snapshot's promoted entities (state rebuilt from their
    rows), then put back their running sums, the one part not derived from the rows."""
    for r in range(promoted.shape[0]):
        e = promoted[r]
        promote(e, enc, tuning, st)
        st.xf[st.seg[e, XSLOT]][:] = sums[r]
