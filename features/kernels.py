"""Numba kernels for per-entity sliding-window features (numbagg style).

This module is the *contract* shared by the stream worker and the batch backfill: both feed
events to :func:`process_events` in the same order, so they produce bit-identical features.

Semantics
---------
* Events are processed in **arrival order** (Kafka offset order within a partition, file
  order in backfill). Each event has a dense entity index (int64), an event time ``t`` in
  epoch **milliseconds** (int64), ``amount`` (float64) and ``merchant_id`` (int64).
* **Lateness is per entity**: an event is *late* if ``t < tmax_e - lateness_ms`` where
  ``tmax_e`` is the largest event time accepted so far for that entity. Late events do not
  touch state; their status is reported (``late[i] = True``, feature row NaN) so the caller
  can dead-letter them. Per-entity (not per-partition) watermarks make the result independent
  of how users are spread over partitions, hence stream == backfill.
* Each accepted event's feature row is computed *as of the event*: windowed aggregates use
  the accepted events that arrived **no later than** it (itself included) whose time lies in
  ``(t - w, t]``. For in-order input this equals pandas' time-based ``rolling(f"{w}ms")`` on
  time-sorted rows (ties: earlier-arrived equal-time rows are included, later ones are not).
  For out-of-order input, earlier-arrived events with time ``> t`` are excluded.
* ``since_last``: ``(t - t_prev) / 1000.0`` where ``t_prev`` is the latest time ``<= t`` among
  earlier-arrived accepted events; ``-1.0`` if none.
* ``ewm_mean``: O(1) state per entity: numerator/denominator referenced to ``tmax_e``.
  In order it equals pandas ``ewm(halflife=Timedelta(h ms), times=..., adjust=True).mean()``.
  A late-but-accepted event (``t < tmax_e``) is added with weight ``0.5 ** ((tmax_e - t) / h)``
  and the emitted value is the entity's value *as of tmax_e* (O(1) state cannot exclude
  "future" events; documented divergence from the windowed aggregates).
* mean/std/sum/max/min/distinct are recomputed over the window's rows on every event (two-pass
  std, ddof=0, 0.0 for one event) instead of running sums: no drift, and results do not depend
  on batch boundaries or snapshot/restore points.

State layout
------------
Per entity ``e`` one row of ``seg[e, :]`` = (TMAX, EVICTED, BASE, HEAD, LEN, CAP) and
``ewm[e, 2k:2k+2]`` = (numerator, denominator) for each ewm spec ``k``. History lives in an
arena (``arena_t`` int64, ``arena_a`` float64, ``arena_m`` int64): entity ``e`` owns block
``[BASE, BASE + CAP)`` whose live rows are ``[BASE + HEAD, BASE + HEAD + LEN)``, sorted by
(time, arrival). Rows with ``time <= tmax_e - lateness_ms - max_window_ms`` can never be in a
future accepted event's window and are evicted; ``EVICTED`` keeps the newest evicted time so
``since_last`` stays exact. A full block is relocated to the arena end with 1.5x capacity;
when the arena itself is full :func:`process_events` returns the index of the first
unprocessed event (state untouched for it except idempotent eviction) and the Python layer
compacts/grows the arena and resumes: no event is ever lost or applied twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numba import njit, types
from numba.typed import Dict

from features.spec import FeatureSpec, max_window_ms, validate_specs

NO_TIME = np.iinfo(np.int64).min  # sentinel: "no time seen / nothing evicted"

# seg columns
TMAX, EVICTED, BASE, HEAD, LEN, CAP = 0, 1, 2, 3, 4, 5
SEG_COLS = 6
# meta slots
META_USED, META_GARBAGE, META_REQUEST = 0, 1, 2
META_SIZE = 3

# agg codes (kernel dispatch); order is internal, names are the public contract
AGG_CODES: dict[str, int] = {
    "count": 0,
    "sum": 1,
    "mean": 2,
    "std": 3,
    "max": 4,
    "min": 5,
    "distinct": 6,
    "since_last": 7,
    "ewm_mean": 8,
}
COL_CODES: dict[str | None, int] = {None: -1, "amount": 0, "merchant_id": 1}

_COUNT, _SUM, _MEAN, _STD, _MAX, _MIN, _DISTINCT, _SINCE_LAST, _EWM = range(9)
_DISTINCT_NAIVE_MAX = 32  # below this an O(k^2) scan beats copying + sorting


class EncodedSpecs(NamedTuple):
    """Specs lowered to the integer arrays the kernel dispatches on."""

    agg: np.ndarray  # int64[F] agg code
    col: np.ndarray  # int64[F] column code
    win_id: np.ndarray  # int64[F] index into uwin (-1 if not windowed)
    uwin: np.ndarray  # int64[U] distinct window lengths (lower bound searched once per event)
    slot: np.ndarray  # int64[F] ewm slot (-1 if not ewm)
    halflife: np.ndarray  # float64[K] halflife per ewm slot, ms
    retention_ms: int  # max sliding window


def encode_specs(specs: Sequence[FeatureSpec]) -> EncodedSpecs:
    """Validate and lower a spec list; the only place spec semantics meet kernel codes."""
    specs = validate_specs(specs)
    agg = np.array([AGG_CODES[s.agg] for s in specs], dtype=np.int64)
    col = np.array([COL_CODES[s.column] for s in specs], dtype=np.int64)
    windows = sorted({s.window_ms for s in specs if AGG_CODES[s.agg] < _SINCE_LAST})
    win_id = np.array(
        [windows.index(s.window_ms) if AGG_CODES[s.agg] < _SINCE_LAST else -1 for s in specs],
        dtype=np.int64,
    )
    ewm_specs = [s for s in specs if s.agg == "ewm_mean"]
    slot = np.array(
        [ewm_specs.index(s) if s.agg == "ewm_mean" else -1 for s in specs], dtype=np.int64
    )
    halflife = np.array([float(s.window_ms) for s in ewm_specs], dtype=np.float64)
    return EncodedSpecs(
        agg=agg,
        col=col,
        win_id=win_id,
        uwin=np.array(windows, dtype=np.int64),
        slot=slot,
        halflife=halflife,
        retention_ms=max_window_ms(specs),
    )


# ---------------------------------------------------------------------------- id mapping


@njit(cache=True)
def new_id_table():  # -> numba.typed.Dict[int64, int64]
    """Empty raw-id -> dense-index table (built in nopython so its code is disk-cached)."""
    return Dict.empty(key_type=types.int64, value_type=types.int64)


@njit(cache=True)
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


# ---------------------------------------------------------------------------- main kernel


@njit(cache=True)
def _distinct_count(arena_m: np.ndarray, lo: int, hi: int, scratch: np.ndarray) -> int:
    """Distinct values in arena_m[lo:hi+1]; scratch must hold hi - lo + 1 items if large."""
    k = hi - lo + 1
    if k <= _DISTINCT_NAIVE_MAX:
        n = 0
        for j in range(lo, hi + 1):
            v = arena_m[j]
            seen = False
            for q in range(lo, j):
                if arena_m[q] == v:
                    seen = True
                    break
            if not seen:
                n += 1
        return n
    buf = scratch[:k]
    buf[:] = arena_m[lo : hi + 1]
    buf.sort()
    n = 1
    for j in range(1, k):
        if buf[j] != buf[j - 1]:
            n += 1
    return n


@njit(cache=True)
def process_events(
    ent: np.ndarray,  # int64[n] dense entity index
    t: np.ndarray,  # int64[n] event time, ms
    amt: np.ndarray,  # float64[n]
    mer: np.ndarray,  # int64[n]
    start: int,  # first event index to process (resume point)
    agg: np.ndarray,  # int64[F]
    col: np.ndarray,  # int64[F]
    win_id: np.ndarray,  # int64[F]
    uwin: np.ndarray,  # int64[U]
    slot: np.ndarray,  # int64[F]
    halflife: np.ndarray,  # float64[K]
    lateness_ms: int,
    retention_ms: int,
    min_seg: int,
    seg: np.ndarray,  # int64[E, 6]
    ewm: np.ndarray,  # float64[E, 2K]
    arena_t: np.ndarray,  # int64[A]
    arena_a: np.ndarray,  # float64[A]
    arena_m: np.ndarray,  # int64[A]
    meta: np.ndarray,  # int64[3] (used, garbage, requested capacity)
    out: np.ndarray,  # float64[n, F]
    late: np.ndarray,  # bool[n]
) -> int:
    """Process events ``start..n-1`` in order; return n, or the index where the arena ran out.

    On an early return ``meta[META_REQUEST]`` holds the block size that did not fit.
    """
    n = ent.shape[0]
    nf = agg.shape[0]
    nk = halflife.shape[0]
    nu = uwin.shape[0]
    arena_size = arena_t.shape[0]
    lo_cache = np.empty(nu, dtype=np.int64)
    scratch = np.empty(64, dtype=np.int64)
    for i in range(start, n):
        e = ent[i]
        ti = t[i]
        tmax = seg[e, TMAX]
        seen = tmax != NO_TIME
        if seen and ti < tmax - lateness_ms:
            late[i] = True
            for f in range(nf):
                out[i, f] = np.nan
            continue
        late[i] = False
        new_tmax = ti if (not seen or ti > tmax) else tmax

        # -- evict rows no future accepted event can see (idempotent: safe to redo on resume)
        base = seg[e, BASE]
        head = seg[e, HEAD]
        length = seg[e, LEN]
        cap = seg[e, CAP]
        horizon = new_tmax - lateness_ms - retention_ms
        k = 0
        while k < length and arena_t[base + head + k] <= horizon:
            k += 1
        if k > 0:
            seg[e, EVICTED] = arena_t[base + head + k - 1]
            head += k
            length -= k
            if length == 0:
                head = 0
            seg[e, HEAD] = head
            seg[e, LEN] = length

        # -- make room for one more row
        if head + length == cap:
            if head > 0:
                # slide live rows to the block start (forward copy, dest < src)
                for j in range(length):
                    arena_t[base + j] = arena_t[base + head + j]
                    arena_a[base + j] = arena_a[base + head + j]
                    arena_m[base + j] = arena_m[base + head + j]
                head = 0
                seg[e, HEAD] = 0
            else:
                new_cap = max(min_seg, cap + max(cap >> 1, 1))
                used = meta[META_USED]
                if used + new_cap > arena_size:
                    meta[META_REQUEST] = new_cap
                    return i
                for j in range(length):
                    arena_t[used + j] = arena_t[base + head + j]
                    arena_a[used + j] = arena_a[base + head + j]
                    arena_m[used + j] = arena_m[base + head + j]
                meta[META_USED] = used + new_cap
                meta[META_GARBAGE] += cap
                base = used
                cap = new_cap
                seg[e, BASE] = base
                seg[e, CAP] = cap

        # -- insert after all rows with time <= ti (upper bound => arrival order breaks ties)
        first = base + head
        pos = first + length
        while pos > first and arena_t[pos - 1] > ti:
            arena_t[pos] = arena_t[pos - 1]
            arena_a[pos] = arena_a[pos - 1]
            arena_m[pos] = arena_m[pos - 1]
            pos -= 1
        arena_t[pos] = ti
        arena_a[pos] = amt[i]
        arena_m[pos] = mer[i]
        length += 1
        seg[e, LEN] = length

        # -- ewm state, referenced to the entity's max time (reads amount: the only column
        # spec validation allows for ewm_mean)
        if nk > 0:
            if not seen:
                for q in range(nk):
                    x = amt[i]
                    ewm[e, 2 * q] = x
                    ewm[e, 2 * q + 1] = 1.0
            elif ti >= tmax:
                for q in range(nk):
                    d = 0.5 ** ((ti - tmax) / halflife[q])
                    ewm[e, 2 * q] = ewm[e, 2 * q] * d + amt[i]
                    ewm[e, 2 * q + 1] = ewm[e, 2 * q + 1] * d + 1.0
            else:
                # late-but-accepted: weight as of tmax, value stays "as of tmax"
                # (guarded by test_kernels::test_out_of_order_vs_bruteforce)
                for q in range(nk):
                    wgt = 0.5 ** ((tmax - ti) / halflife[q])
                    ewm[e, 2 * q] += wgt * amt[i]
                    ewm[e, 2 * q + 1] += wgt
        seg[e, TMAX] = new_tmax

        # -- features over rows [lo, pos]
        for u in range(nu):
            lo_cache[u] = -1
        for f in range(nf):
            code = agg[f]
            if code == _SINCE_LAST:
                prev = arena_t[pos - 1] if pos > first else seg[e, EVICTED]
                out[i, f] = -1.0 if prev == NO_TIME else (ti - prev) / 1000.0
                continue
            if code == _EWM:
                q = slot[f]
                out[i, f] = ewm[e, 2 * q] / ewm[e, 2 * q + 1]
                continue
            u = win_id[f]
            lo = lo_cache[u]
            if lo < 0:
                # first row with time > ti - w (a row at exactly ti - w is excluded;
                # test_kernels::test_window_boundary)
                bound = ti - uwin[u]
                a = first
                b = pos
                while a < b:
                    mid = (a + b) >> 1
                    if arena_t[mid] > bound:
                        b = mid
                    else:
                        a = mid + 1
                lo = a
                lo_cache[u] = lo
            cnt = pos - lo + 1
            if code == _COUNT:
                out[i, f] = float(cnt)
            elif code == _DISTINCT:
                if cnt > scratch.shape[0]:
                    scratch = np.empty(2 * cnt, dtype=np.int64)
                out[i, f] = float(_distinct_count(arena_m, lo, pos, scratch))
            else:
                c = col[f]
                if code in (_MAX, _MIN):
                    best = arena_a[lo] if c == 0 else float(arena_m[lo])
                    for j in range(lo + 1, pos + 1):
                        v = arena_a[j] if c == 0 else float(arena_m[j])
                        if (code == _MAX and v > best) or (code == _MIN and v < best):
                            best = v
                    out[i, f] = best
                else:
                    s = 0.0
                    for j in range(lo, pos + 1):
                        s += arena_a[j] if c == 0 else float(arena_m[j])
                    if code == _SUM:
                        out[i, f] = s
                    elif code == _MEAN:
                        out[i, f] = s / cnt
                    else:
                        # two-pass population variance: no cancellation drift, exactly 0.0
                        # for a single row (test_kernels::test_single_event)
                        m = s / cnt
                        ss = 0.0
                        for j in range(lo, pos + 1):
                            dv = (arena_a[j] if c == 0 else float(arena_m[j])) - m
                            ss += dv * dv
                        out[i, f] = np.sqrt(ss / cnt)
    return n


# ---------------------------------------------------------------------------- maintenance


@njit(cache=True)
def compact_arena(
    seg: np.ndarray,
    order: np.ndarray,  # int64: entities with CAP > 0, by ascending BASE
    new_cap: np.ndarray,  # int64[E]: new capacity, must be <= CAP (in-place sliding)
    arena_t: np.ndarray,
    arena_a: np.ndarray,
    arena_m: np.ndarray,
) -> int:
    """Slide live blocks to the arena front in place; returns the new used size.

    In place is safe because blocks are visited by ascending base and never grow, so every
    destination is <= its source (no second arena => peak memory stays ~1x).
    """
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
def gather_live(
    seg: np.ndarray,
    n_entities: int,
    arena_t: np.ndarray,
    arena_a: np.ndarray,
    arena_m: np.ndarray,
    out_t: np.ndarray,
    out_a: np.ndarray,
    out_m: np.ndarray,
) -> None:
    """Copy live rows of entities 0..n-1 back to back (snapshot path)."""
    cursor = 0
    for e in range(n_entities):
        src = seg[e, BASE] + seg[e, HEAD]
        for j in range(seg[e, LEN]):
            out_t[cursor + j] = arena_t[src + j]
            out_a[cursor + j] = arena_a[src + j]
            out_m[cursor + j] = arena_m[src + j]
        cursor += seg[e, LEN]
