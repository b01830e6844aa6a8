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
* sum/mean/std (population, ddof=0; 0.0 for one event) and max/min read ``amount``,
  distinct reads ``merchant_id`` (the only columns spec validation allows for them).

Algorithms
----------
Results depend only on the event sequence (never on batch boundaries, arena layout or
snapshot/restore points; ``TUNING`` is a code constant, shared by stream and backfill, and
only moves the last bits of sums), but how a row is computed depends on the entity's
history size:

* **Scan path** (entities holding at most ``TUNING["promote_above"]`` rows, i.e. almost all
  of them): the window's rows are scanned (two-pass std, plain sums). For a handful of rows
  this beats any incremental bookkeeping, and it touches no state beyond the rows
  themselves.
* **Incremental path** (*promoted* entities, in-order events ``t >= tmax_e``): O(1)
  amortized per event however many rows the window holds. Promotion rebuilds the state
  from the retained rows; an entity is demoted (state dropped) once it holds fewer than
  ``TUNING["demote_below"]`` rows.

  - per window length: a start pointer advanced monotonically (two pointers); ``count``.
  - sum/mean/std: double-double (~106-bit) running sums of ``x`` and of ``x*x`` (the
    square split exactly with Dekker's product), added on append and subtracted when a row
    leaves; ``var = (n*Sxx - Sx**2) / n**2`` evaluated in double-double. A window whose
    rows all hold the same amount (per row: how many rows right before it hold its amount)
    yields exactly 0.0, as pandas does. Sums restart from exact zeros when a window empties
    and are recomputed from the window's rows if they stop being finite.
  - max/min: a monotonic stack over the entity's rows kept as per-row int32 links (row
    below, row above) plus, per window, its first stack row (the window's max/min);
    appends pop dominated rows, windows advance along the links (amortized O(1), also for
    adversarial monotone sequences).
  - distinct: per live row a flag "a later row has the same merchant" and a link to the
    previous row with the same merchant; a window's count is the number of its unflagged
    rows, kept up to date on append (is the merchant's previous occurrence inside the
    window?) and when a row leaves (unflagged => -1). The previous occurrence is found by
    scanning the live rows while they are few, else in a hash map (entity, merchant) ->
    last live row that holds only such entities' merchants (entries leave with their rows).

* **Out-of-order events of promoted entities** (``t < tmax_e``, a few per second in a real
  stream: producers interleave): the row is inserted in time order at logical row ``p``
  and folded into the state anchored at ``tmax_e`` (O(rows after it): they move up one,
  as in the arena insert). Its own window ``O = [lt, p]`` is then derived from the state:
  with ``T = [lo, end)`` the ``tmax_e`` window, ``R = (p, end)`` the rows in
  ``(t, tmax_e]`` and ``L = [lt, lo)`` those in ``(t - w, tmax_e - w]``, ``O + R = L + T``,
  so a window costs O(|R| + |L|), typically a few rows, instead of O(|O|):

  - count from the pointers; sums(O) = sums(T) - sums(R) + sums(L) in double-double, the
    0.0 rule from the row's run length;
  - max/min: T's max when it lies in O (at or before p), else the window is scanned (rare
    for random amounts: T's max must be one of the few rows of R);
  - distinct(O) = unflagged(T) + unflagged(L) - unflagged(R) + the rows of R whose
    previous occurrence is in O (the first occurrence after p of a merchant O holds).

  A window is scanned instead when ``TUNING["late_scan_factor"] * (|R| + |L|) > |O|`` (a
  row far behind ``tmax_e``) or its sums are not finite.

State layout
------------
Per entity ``e`` one row of ``seg[e, :]`` = (TMAX, EVICTED, BASE, HEAD, LEN, CAP, XSLOT) and
``ewm[e, 2k:2k+2]`` = (numerator, denominator) for each ewm spec ``k``. History lives in an
arena (``arena_t`` int64, ``arena_a`` float64, ``arena_m`` int64): entity ``e`` owns block
``[BASE, BASE + CAP)`` whose live rows are ``[BASE + HEAD, BASE + HEAD + LEN)``, sorted by
(time, arrival). Rows with ``time <= tmax_e - lateness_ms - max_window_ms`` can never be in a
future accepted event's window and are evicted; ``EVICTED`` keeps the newest evicted time so
``since_last`` stays exact. A full block is relocated to the arena end with 1.5x capacity;
when the arena itself is full :func:`process_events` returns the index of the first
unprocessed event (state untouched for it) and the Python layer compacts/grows the arena
and resumes: no event is ever lost or applied twice.

A promoted entity (``XSLOT >= 0``) also owns slot ``XSLOT`` of the side storage (typed lists
made by :func:`new_side`): ``xi[s]`` int64 (X_SEQ: logical number of the first live row,
X_DIDX, X_MASK, then window pointers, fronts and distinct counts), ``xf[s]`` float64
(double-double sums) and ``xr[s]`` int32 ``[C, GL_NRC]``, a ring indexed by
``logical row & X_MASK`` holding per row the stack links, the previous-occurrence link
(0: none; a link to an evicted row, below X_SEQ, reads as none), the run length and the
distinct flag. Logical row ``L`` is at
arena index ``BASE + HEAD + L - X_SEQ``. Links are relative distances and pointers are
logical, so relocation/compaction of the arena never touches the side storage. Only the
running sums depend on more than the rows; snapshots keep them (and which entities are
promoted) and :func:`restore_promoted` rebuilds the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numba import njit, types
from numba.typed import Dict, List

from features.spec import FeatureSpec, max_window_ms, validate_specs

NO_TIME = np.iinfo(np.int64).min  # sentinel: "no time seen / nothing evicted"
NONE = -1  # sentinel logical row / slot (logical rows are >= 0)
MAX_BLOCK = (1 << 31) - 1  # row links are int32 distances within one entity's history

# seg columns
TMAX, EVICTED, BASE, HEAD, LEN, CAP, XSLOT = range(7)
SEG_COLS = 7
# meta slots
META_USED, META_GARBAGE, META_REQUEST, META_XBYTES = range(4)
META_SIZE = 4
# side int state (xi[s]); per-window columns follow at the indices in EncodedSpecs.wlay
X_SEQ, X_DIDX, X_MASK = range(3)
X_COLS = 3
# per-window layout columns (EncodedSpecs.wlay[u, :]); -1 = absent
WL_LO, WL_SUM, WL_SQ, WL_FMAX, WL_FMIN, WL_DIST = range(6)
WL_COLS = 6
# global layout slots (EncodedSpecs.glay)
GL_PMAX, GL_PMIN, GL_DMAX, GL_PREV, GL_RUN, GL_NXI, GL_NXF, GL_NRC = range(8)
GL_SIZE = 8

# Thresholds (rows); performance only, every setting gives the same features up to float
# rounding (tests run the oracles with the extremes, see tests/features/conftest.py).
TUNING: dict[str, int] = {
    # scan path while an entity holds <= this many rows, incremental path above
    "promote_above": 32,
    # back to the scan path below this many rows (hysteresis: no flapping)
    "demote_below": 8,
    # distinct: hash-map lookups once the entity holds more live rows ...
    "dist_index_above": 64,
    # ... and scanning again below this many
    "dist_unindex_below": 16,
    # an out-of-order row of a promoted entity: a window's features are derived from the
    # state while this factor times the rows to correct is at most the rows in the window,
    # else the window is scanned (0: always derive)
    "late_scan_factor": 2,
}
T_PROMOTE, T_DEMOTE, T_DIST_ON, T_DIST_OFF, T_LATE = range(5)

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
# the column each windowed agg reads in the kernels (= spec._ALLOWED_COLUMNS)
_KERNEL_COLUMN: dict[str, str | None] = {
    "count": None,
    "sum": "amount",
    "mean": "amount",
    "std": "amount",
    "max": "amount",
    "min": "amount",
    "distinct": "merchant_id",
}

_COUNT, _SUM, _MEAN, _STD, _MAX, _MIN, _DISTINCT, _SINCE_LAST, _EWM = range(9)
_DISTINCT_NAIVE_MAX = 32  # below this an O(k^2) scan beats copying + sorting
_SPLITTER = 134217729.0  # 2**27 + 1: Dekker split of a float64 into two 26-bit halves
_MIN_RING = 16

_DIST_KEY = types.UniTuple(types.int64, 2)  # (entity, merchant)
_XI_T = types.Array(types.int64, 1, "C")
_XF_T = types.Array(types.float64, 1, "C")
_XR_T = types.Array(types.int32, 2, "C")


class EncodedSpecs(NamedTuple):
    """Specs lowered to the integer arrays the kernel dispatches on."""

    agg: np.ndarray  # int64[F] agg code
    col: np.ndarray  # int64[F] column code
    win_id: np.ndarray  # int64[F] index into uwin (-1 if not windowed)
    uwin: np.ndarray  # int64[U] distinct window lengths (lower bound searched once per event)
    slot: np.ndarray  # int64[F] ewm slot (-1 if not ewm)
    halflife: np.ndarray  # float64[K] halflife per ewm slot, ms
    retention_ms: int  # max sliding window
    # incremental-state layout of promoted entities
    wlay: np.ndarray  # int64[U, WL_COLS]: xi column of the window start (WL_LO), xf column
    # of the sums (WL_SUM), 1 if x*x sums are kept (WL_SQ), xi column of the max/min front
    # (WL_FMAX/WL_FMIN) and of the distinct count (WL_DIST); -1 where absent
    glay: np.ndarray  # int64[GL_SIZE]: ring column of the max/min stack links, window index
    # of the longest distinct window, ring column of the previous-occurrence links (distinct)
    # and of the run lengths (std), -1 where absent; sizes of xi/xf/ring rows


def encode_specs(specs: Sequence[FeatureSpec]) -> EncodedSpecs:
    """Validate and lower a spec list; the only place spec semantics meet kernel codes."""
    specs = validate_specs(specs)
    for s in specs:
        if s.agg in _KERNEL_COLUMN and s.column != _KERNEL_COLUMN[s.agg]:
            raise ValueError(f"{s.name}: the kernels compute {s.agg} of {_KERNEL_COLUMN[s.agg]}")
    agg = np.array([AGG_CODES[s.agg] for s in specs], dtype=np.int64)
    col = np.array([COL_CODES[s.column] for s in specs], dtype=np.int64)
    windowed = [s for s in specs if AGG_CODES[s.agg] < _SINCE_LAST]
    windows = sorted({s.window_ms for s in windowed})
    win_id = np.array(
        [windows.index(s.window_ms) if AGG_CODES[s.agg] < _SINCE_LAST else -1 for s in specs],
        dtype=np.int64,
    )
    ewm_specs = [s for s in specs if s.agg == "ewm_mean"]
    slot = np.array(
        [ewm_specs.index(s) if s.agg == "ewm_mean" else -1 for s in specs], dtype=np.int64
    )
    halflife = np.array([float(s.window_ms) for s in ewm_specs], dtype=np.float64)

    wlay = np.full((len(windows), WL_COLS), -1, dtype=np.int64)
    wlay[:, WL_SQ] = 0
    n_xi, n_xf = X_COLS, 0
    for u, w in enumerate(windows):
        aggs = {s.agg for s in windowed if s.window_ms == w}
        wlay[u, WL_LO] = n_xi
        n_xi += 1
        if aggs & {"sum", "mean", "std"}:
            wlay[u, WL_SUM] = n_xf
            wlay[u, WL_SQ] = int("std" in aggs)
            n_xf += 4 if "std" in aggs else 2
        for name, c in (("max", WL_FMAX), ("min", WL_FMIN), ("distinct", WL_DIST)):
            if name in aggs:
                wlay[u, c] = n_xi
                n_xi += 1
    has_max = any(s.agg == "max" for s in specs)
    has_min = any(s.agg == "min" for s in specs)
    has_std = any(s.agg == "std" for s in specs)
    dist_w = [u for u in range(len(windows)) if wlay[u, WL_DIST] >= 0]
    # ring columns: stack links (max, min), previous-occurrence links, run lengths, flags
    n_rc = 2 * (int(has_max) + int(has_min))
    prev_col = n_rc if dist_w else -1
    n_rc += int(bool(dist_w))
    run_col = n_rc if has_std else -1
    n_rc += int(has_std)
    glay = np.array(
        [
            0 if has_max else -1,
            (2 if has_max else 0) if has_min else -1,
            max(dist_w) if dist_w else -1,  # windows are sorted: the last is the longest
            prev_col,
            run_col,
            n_xi,
            n_xf,
            n_rc + 1,  # + the distinct flag column (always the last)
        ],
        dtype=np.int64,
    )
    return EncodedSpecs(
        agg=agg,
        col=col,
        win_id=win_id,
        uwin=np.array(windows, dtype=np.int64),
        slot=slot,
        halflife=halflife,
        retention_ms=max_window_ms(specs),
        wlay=wlay,
        glay=glay,
    )


def tuning_array() -> np.ndarray:
    """``TUNING`` as the kernel's int64 argument (read on every call, so tests can patch it)."""
    return np.array(
        [
            TUNING["promote_above"],
            TUNING["demote_below"],
            TUNING["dist_index_above"],
            TUNING["dist_unindex_below"],
            TUNING["late_scan_factor"],
        ],
        dtype=np.int64,
    )


def new_seg(n: int) -> np.ndarray:
    """Per-entity rows for ``n`` unseen entities."""
    seg = np.zeros((n, SEG_COLS), dtype=np.int64)
    seg[:, TMAX] = NO_TIME
    seg[:, EVICTED] = NO_TIME
    seg[:, XSLOT] = NONE
    return seg


# ---------------------------------------------------------------------------- id mapping


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


# ---------------------------------------------------------------------------- double-double


@njit(cache=True)
def _two_sum(a: float, b: float) -> tuple[float, float]:
    """s + e == a + b exactly (Knuth), s = fl(a + b)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@njit(cache=True)
def _two_prod(a: float, b: float) -> tuple[float, float]:
    """p + e == a * b exactly (Dekker; no FMA needed), p = fl(a * b)."""
    p = a * b
    c = _SPLITTER * a
    ah = c - (c - a)
    al = a - ah
    c = _SPLITTER * b
    bh = c - (c - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@njit(cache=True)
def _dd_add(hi: float, lo: float, bh: float, bl: float) -> tuple[float, float]:
    """(hi, lo) + (bh, bl) in double-double, renormalized so that hi == fl(hi + lo).

    Running window sums add and subtract every row once. In plain float64 a 1e9 row (x*x =
    1e18) leaves ~1e2 of rounding in the sum of squares after it left, far more than the
    variance of the small rows that follow (pandas' online variance is off by up to ~7 on
    the hot-user test); at ~106 bits the residue is ~1e-14
    (test_kernels::test_hot_user_matches_pandas).
    """
    s, e = _two_sum(hi, bh)
    t, f = _two_sum(lo, bl)
    s, e = _two_sum(s, e + t)
    return _two_sum(s, e + f)


@njit(cache=True, inline="always")
def _acc_add(cf: np.ndarray, c: int, sq: bool, x: float) -> None:
    """Add x (and x*x, split exactly) to the double-double sums at cf[c:c+2] (cf[c+2:c+4])."""
    cf[c], cf[c + 1] = _dd_add(cf[c], cf[c + 1], x, 0.0)
    if sq:
        p, q = _two_prod(x, x)
        cf[c + 2], cf[c + 3] = _dd_add(cf[c + 2], cf[c + 3], p, q)


@njit(cache=True, inline="always")
def _acc_sub(cf: np.ndarray, c: int, sq: bool, x: float) -> None:
    cf[c], cf[c + 1] = _dd_add(cf[c], cf[c + 1], -x, 0.0)
    if sq:
        p, q = _two_prod(x, x)
        cf[c + 2], cf[c + 3] = _dd_add(cf[c + 2], cf[c + 3], -p, -q)


@njit(cache=True)
def _acc_fill(cf: np.ndarray, c: int, sq: bool, arena_a: np.ndarray, lo: int, hi: int) -> None:
    """Sums over arena_a[lo:hi] from exact zeros (rebuild, reset)."""
    cf[c] = 0.0
    cf[c + 1] = 0.0
    if sq:
        cf[c + 2] = 0.0
        cf[c + 3] = 0.0
    for j in range(lo, hi):
        _acc_add(cf, c, sq, arena_a[j])


@njit(cache=True)
def _dd_std(sh: float, sl: float, qh: float, ql: float, n: int) -> float:
    """Population std from double-double Sx = sh + sl, Sxx = qh + ql over n rows.

    n*Sxx - Sx**2 is formed in double-double: the cancellation that ruins the textbook
    one-pass formula costs nothing at ~106 bits, and rows that left the window leave no
    residue beyond ~2**-106 of the largest sum seen (test_kernels::
    test_hot_user_matches_pandas: nearly-constant windows right after 1e9 spikes).
    """
    fn = float(n)
    ah, al = _two_prod(qh, fn)
    bh, bl = _two_prod(sh, sh)
    dh, _ = _dd_add(ah, al + ql * fn, -bh, -(bl + 2.0 * sh * sl))
    v = dh / fn / fn
    if v > 0.0:
        return np.sqrt(v)
    # rounding can leave a tiny negative variance: 0.0; NaN (inf sums) stays NaN so the
    # caller falls back to two passes (test_kernels::test_huge_amount_does_not_poison_sums)
    return 0.0 if v <= 0.0 else v


@njit(cache=True)
def _two_pass_std(arena_a: np.ndarray, lo: int, hi: int) -> float:
    """Two-pass population std of arena_a[lo:hi]: no cancellation, exactly 0.0 for one row
    (test_kernels::test_single_event, test_in_order_matches_pandas)."""
    s = 0.0
    for j in range(lo, hi):
        s += arena_a[j]
    m = s / (hi - lo)
    ss = 0.0
    for j in range(lo, hi):
        dv = arena_a[j] - m
        ss += dv * dv
    return np.sqrt(ss / (hi - lo))


# ---------------------------------------------------------------------------- scan path


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


@njit(cache=True, inline="always")
def _scan_value(
    code: int, arena_a: np.ndarray, arena_m: np.ndarray, lo: int, pos: int, scratch: np.ndarray
) -> tuple[float, np.ndarray]:
    """One windowed feature (not count) of arena rows [lo, pos] by scanning them; returns it
    and the (possibly regrown) scratch buffer."""
    cnt = pos - lo + 1
    if code == _DISTINCT:
        if cnt > scratch.shape[0]:
            scratch = np.empty(2 * cnt, dtype=np.int64)
        return float(_distinct_count(arena_m, lo, pos, scratch)), scratch
    if code in (_MAX, _MIN):
        best = arena_a[lo]
        for j in range(lo + 1, pos + 1):
            v = arena_a[j]
            if (code == _MAX and v > best) or (code == _MIN and v < best):
                best = v
        return best, scratch
    if code == _STD:
        return _two_pass_std(arena_a, lo, pos + 1), scratch
    # plain left-to-right sum of a few rows (test_kernels::test_in_order_matches_pandas)
    s = 0.0
    for j in range(lo, pos + 1):
        s += arena_a[j]
    return (s if code == _SUM else s / cnt), scratch


@njit(cache=True, inline="always")
def _scan_features(
    i: int,
    e: int,
    ti: int,
    first: int,
    pos: int,
    agg: np.ndarray,
    win_id: np.ndarray,
    uwin: np.ndarray,
    slot: np.ndarray,
    seg: np.ndarray,
    ewm: np.ndarray,
    arena_t: np.ndarray,
    arena_a: np.ndarray,
    arena_m: np.ndarray,
    lo_cache: np.ndarray,
    scratch: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Features of the row at ``pos`` by scanning its window rows [lo, pos]; returns the
    (possibly regrown) scratch buffer."""
    for u in range(uwin.shape[0]):
        lo_cache[u] = -1
    for f in range(agg.shape[0]):
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
            lo = _first_after(arena_t, first, pos, ti - uwin[u])
            lo_cache[u] = lo
        if code == _COUNT:
            out[i, f] = float(pos - lo + 1)
        else:
            out[i, f], scratch = _scan_value(code, arena_a, arena_m, lo, pos, scratch)
    return scratch


@njit(cache=True, inline="always")
def _first_after(arena_t: np.ndarray, a: int, b: int, bound: int) -> int:
    """First index in [a, b) whose time is > bound (b if none; times sorted)."""
    while a < b:
        mid = (a + b) >> 1
        if arena_t[mid] > bound:
            b = mid
        else:
            a = mid + 1
    return a


# ---------------------------------------------------------------------------- incremental


@njit(cache=True, inline="always")
def _stack_push(
    arena_a: np.ndarray,
    ring: np.ndarray,
    mask: int,
    pc: int,
    is_max: bool,
    off: int,
    seq: int,
    j: int,
) -> int:
    """Push logical row j on the entity's max (min) stack; return the row below it or NONE.

    The stack holds the rows strictly greater (smaller) than every later row; ring column
    pc links each to the row below, pc + 1 to the row above (distances, 0: none). Every row
    is popped at most once: amortized O(1) (monotone runs in
    test_kernels::test_hot_user_matches_pandas).
    """
    x = arena_a[off + j]
    p = j - 1
    while p >= seq:
        v = arena_a[off + p]
        if (v <= x) if is_max else (v >= x):
            d = ring[p & mask, pc]
            p = p - d if d > 0 else NONE
        else:
            break
    if p < seq:
        p = NONE
    ring[j & mask, pc] = 0 if p == NONE else j - p
    ring[j & mask, pc + 1] = 0
    if p != NONE:
        ring[p & mask, pc + 1] = j - p
    return p


@njit(cache=True)
def _dist_index(e: int, ci, ring, mask: int, fcol: int, arena_m, dmap, lo, end, off) -> None:
    """Map (e, merchant) -> last occurrence for the merchants of logical rows [lo, end)."""
    for q in range(lo, end):
        if ring[q & mask, fcol] == 0:
            dmap[(e, arena_m[off + q])] = q
    ci[X_DIDX] = 1


@njit(cache=True)
def _dist_unindex(e: int, ci, ring, mask: int, fcol: int, arena_m, dmap, lo, end, off) -> None:
    """Remove the entity's map entries (exactly its window's last occurrences)."""
    for q in range(lo, end):
        if ring[q & mask, fcol] == 0:
            dmap.pop((e, arena_m[off + q]), NONE)
    ci[X_DIDX] = 0


@njit(cache=True)
def _ring_fit(xr, s: int, ci, ring, seq: int, end: int, need: int, meta) -> np.ndarray:
    """The slot's ring, doubled (live logical rows [seq, end) copied) until it holds need."""
    if need <= ring.shape[0]:
        return ring
    cap = max(ring.shape[0], _MIN_RING)
    while cap < need:
        cap *= 2
    grown = np.zeros((cap, ring.shape[1]), dtype=np.int32)
    if ring.shape[0] > 0:
        mask = ci[X_MASK]
        for q in range(seq, end):
            for c in range(ring.shape[1]):
                grown[q & (cap - 1), c] = ring[q & mask, c]
    meta[META_XBYTES] += (cap - ring.shape[0]) * ring.shape[1] * 4
    xr[s] = grown
    ci[X_MASK] = cap - 1
    return grown


@njit(cache=True, inline="always")
def _set_run(ring, mask: int, rc: int, arena_a, off: int, seq: int, q: int) -> None:
    """Ring column rc of logical row q: how many rows right before it hold its amount.

    The rows [q - run, q] are then equal, so a window [lo, q] is constant iff q - run <= lo
    (std exactly 0.0, as pandas). Capped at the live rows before q: a run reaching back
    past the oldest live row reaches every window start.
    """
    if q > seq and arena_a[off + q - 1] == arena_a[off + q]:
        ring[q & mask, rc] = min(ring[(q - 1) & mask, rc] + 1, q - seq)
    else:
        ring[q & mask, rc] = 0


@njit(cache=True)
def _insert_late(
    e: int,
    pos: int,
    uwin: np.ndarray,
    wlay: np.ndarray,
    glay: np.ndarray,
    tune: np.ndarray,
    seg: np.ndarray,
    arena_t: np.ndarray,
    arena_a: np.ndarray,
    arena_m: np.ndarray,
    xi,
    xf,
    xr,
    dmap,
    meta: np.ndarray,
) -> None:
    """Fold an out-of-order row (already inserted at arena index ``pos``, before the row of
    time TMAX) into a promoted entity's state, anchored at TMAX.

    Rows after it moved up one logical number; everything pointing at them moves too. Cost:
    O(rows after pos + popped stack rows), the same order as the arena insert itself
    (test_kernels::test_out_of_order_vs_bruteforce, test_hot_users_out_of_order_vs_bruteforce).
    """
    xs = seg[e, XSLOT]
    ci = xi[xs]
    cf = xf[xs]
    length = seg[e, LEN]
    seq = ci[X_SEQ]
    off = seg[e, BASE] + seg[e, HEAD] - seq
    end = seq + length  # new numbering
    p = pos - off  # logical number of the new row
    ti = arena_t[pos]
    x = arena_a[pos]
    mm = arena_m[pos]
    tm = seg[e, TMAX]
    ring = _ring_fit(xr, xs, ci, xr[xs], seq, end - 1, length, meta)
    mask = ci[X_MASK]
    nrc = ring.shape[1]
    fcol = nrc - 1
    for q in range(end - 2, p - 1, -1):
        for c in range(nrc):
            ring[(q + 1) & mask, c] = ring[q & mask, c]
    for c in range(nrc):
        ring[p & mask, c] = 0
    nu = uwin.shape[0]
    # window starts: a window the row is not in starts after it (its start moves up one)
    for u in range(nu):
        if ti <= tm - uwin[u]:
            ci[wlay[u, WL_LO]] += 1
        else:
            c = wlay[u, WL_SUM]
            if c >= 0:
                sq = wlay[u, WL_SQ] > 0
                _acc_add(cf, c, sq, x)
                if not (np.isfinite(cf[c]) and (not sq or np.isfinite(cf[c + 2]))):
                    _acc_fill(cf, c, sq, arena_a, off + ci[wlay[u, WL_LO]], off + end)
    rc = glay[GL_RUN]
    if rc >= 0:
        # run lengths of the new row and of the rows after it, recomputed (distances to rows
        # before it grew by one)
        for q in range(p, end):
            _set_run(ring, mask, rc, arena_a, off, seq, q)
    for which in (GL_PMAX, GL_PMIN):
        pc = glay[which]
        if pc < 0:
            continue
        is_max = which == GL_PMAX
        # a: lowest stack row after the new one, b: highest stack row before it. Links of
        # rows after it that point before it are one short now (distances moved with rows).
        a = end - 1
        b = NONE
        while True:
            d = ring[a & mask, pc]
            if d == 0:
                break
            if a - d > p:
                a -= d
            else:
                b = a - d - 1
                break
        if b < seq:
            b = NONE
        va = arena_a[off + a]
        on = (x > va) if is_max else (x < va)  # the row is on the stack
        if on:
            while b != NONE:
                vb = arena_a[off + b]
                if (vb <= x) if is_max else (vb >= x):
                    d = ring[b & mask, pc]
                    b = b - d if d > 0 else NONE
                    if b < seq:
                        b = NONE
                else:
                    break
            ring[p & mask, pc] = 0 if b == NONE else p - b
            ring[p & mask, pc + 1] = a - p
            ring[a & mask, pc] = a - p
            if b != NONE:
                ring[b & mask, pc + 1] = p - b
        else:
            ring[a & mask, pc] = 0 if b == NONE else a - b
            if b != NONE:
                ring[b & mask, pc + 1] = a - b
        fc = WL_FMAX if is_max else WL_FMIN
        for u in range(nu):
            col = wlay[u, fc]
            if col < 0:
                continue
            f = ci[col]  # old numbering
            if ti <= tm - uwin[u] or (f >= p and not on):
                ci[col] = f + 1
            elif f >= p:
                ci[col] = p
            elif on and ((arena_a[off + f] <= x) if is_max else (arena_a[off + f] >= x)):
                ci[col] = p  # the front was popped by the new row
    dm = glay[GL_DMAX]
    if dm >= 0:
        # Flags and previous-occurrence links cover every live row, so the row's merchant is
        # looked up before it however old it is (test_kernels::
        # test_promoted_late_rows_derived_from_state). Links of rows after it that point
        # before it are one short now; links to evicted rows are dropped on the way.
        lc = glay[GL_PREV]
        later = NONE  # first row after the new one with its merchant
        for q in range(p + 1, end):
            d = ring[q & mask, lc]
            if d > 0:
                target = q - 1 - d  # old numbering: rows before p did not move
                if target < p:
                    ring[q & mask, lc] = d + 1 if target >= seq else 0
            if later == NONE and arena_m[off + q] == mm:
                later = q
        indexed = ci[X_DIDX] != 0
        prev = NONE  # last row before the new one with its merchant
        if later != NONE:
            d = ring[later & mask, lc]
            if d > 0 and later - d >= seq:
                prev = later - d  # already flagged: ``later`` comes after it
            ring[later & mask, lc] = later - p
            ring[p & mask, fcol] = 1
        else:
            if indexed:
                prev = dmap.get((e, mm), NONE)  # the last occurrence, before the new row
                if prev < seq:  # (entries leave with their rows: cannot happen)
                    prev = NONE
                dmap[(e, mm)] = p
            else:
                q = p - 1
                while q >= seq:
                    if arena_m[off + q] == mm:
                        prev = q
                        break
                    q -= 1
            if prev != NONE:
                ring[prev & mask, fcol] = 1
            for u in range(nu):
                dc = wlay[u, WL_DIST]
                if dc >= 0 and ti > tm - uwin[u] and prev < ci[wlay[u, WL_LO]]:
                    ci[dc] += 1
        if prev != NONE:
            ring[p & mask, lc] = p - prev
        if indexed:
            # renumber the map entries of rows that moved up (last occurrences = unflagged)
            for q in range(p + 1, end):
                if ring[q & mask, fcol] == 0:
                    dmap[(e, arena_m[off + q])] = q
        live = end - seq
        if not indexed and live > tune[T_DIST_ON]:
            _dist_index(e, ci, ring, mask, fcol, arena_m, dmap, seq, end, off)
        elif indexed and live < tune[T_DIST_OFF]:
            _dist_unindex(e, ci, ring, mask, fcol, arena_m, dmap, seq, end, off)


@njit(cache=True)
def _late_features(
    i: int,
    e: int,
    pos: int,
    agg: np.ndarray,
    win_id: np.ndarray,
    uwin: np.ndarray,
    wlay: np.ndarray,
    glay: np.ndarray,
    slot: np.ndarray,
    tune: np.ndarray,
    seg: np.ndarray,
    ewm: np.ndarray,
    arena_t: np.ndarray,
    arena_a: np.ndarray,
    arena_m: np.ndarray,
    xi,
    xf,
    xr,
    lo_cache: np.ndarray,
    derive: np.ndarray,
    acc: np.ndarray,
    scratch: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Features of an out-of-order row of a promoted entity (arena index ``pos``, already
    folded in by :func:`_insert_late`), derived from the state anchored at TMAX.

    Per window, with p the row's logical number: its own rows are O = [lt, p], the TMAX
    window is T = [lo, end), the rows after it (in time) R = (p, end) and L = [lt, lo), so
    O + R = L + T. A window costs O(|R| + |L|), usually a few rows, instead of O(|O|); it is
    scanned when ``tune[T_LATE] * (|R| + |L|) > |O|`` (a row far behind TMAX), when its
    sums are not finite, and max/min when T's max/min lies in R. Returns the (possibly
    regrown) scratch buffer (test_kernels::test_promoted_late_rows_derived_from_state).
    """
    xs = seg[e, XSLOT]
    ci = xi[xs]
    cf = xf[xs]
    ring = xr[xs]
    mask = ci[X_MASK]
    seq = ci[X_SEQ]
    first = seg[e, BASE] + seg[e, HEAD]
    off = first - seq
    end = seq + seg[e, LEN]
    p = pos - off
    ti = arena_t[pos]
    n_after = end - 1 - p
    for u in range(uwin.shape[0]):
        lo = ci[wlay[u, WL_LO]]
        # T's rows are all inside O's time range or after it: search before them only
        lt = _first_after(arena_t, first, min(pos, off + lo), ti - uwin[u]) - off
        lo_cache[u] = lt
        derive[u] = tune[T_LATE] * (n_after + lo - lt) <= p - lt + 1
        c = wlay[u, WL_SUM]
        if derive[u] and c >= 0:
            # sums(O) = sums(T) - sums(R) + sums(L), in double-double like the running sums
            sq = wlay[u, WL_SQ] > 0
            b = 4 * u
            for z in range(4 if sq else 2):
                acc[b + z] = cf[c + z]
            for q in range(p + 1, end):
                _acc_sub(acc, b, sq, arena_a[off + q])
            for q in range(lt, lo):
                _acc_add(acc, b, sq, arena_a[off + q])
            if not (np.isfinite(acc[b]) and (not sq or np.isfinite(acc[b + 2]))):
                # an amount near float64 overflow in T, R or L
                # (test_kernels::test_huge_amount_does_not_poison_sums)
                derive[u] = False
    fcol = glay[GL_NRC] - 1
    lc = glay[GL_PREV]
    rc = glay[GL_RUN]
    for f in range(agg.shape[0]):
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
        lt = lo_cache[u]
        cnt = p - lt + 1
        if code == _COUNT:
            out[i, f] = float(cnt)
            continue
        if not derive[u]:
            out[i, f], scratch = _scan_value(code, arena_a, arena_m, off + lt, pos, scratch)
            continue
        lo = ci[wlay[u, WL_LO]]
        b = 4 * u
        if code in (_SUM, _MEAN):
            out[i, f] = acc[b] if code == _SUM else acc[b] / cnt
        elif code == _STD:
            if p - ring[p & mask, rc] <= lt:
                out[i, f] = 0.0  # rows all equal (test_kernels::test_late_row_breaks_constant_run)
            else:
                v = _dd_std(acc[b], acc[b + 1], acc[b + 2], acc[b + 3], cnt)
                if not np.isfinite(v):
                    v = _two_pass_std(arena_a, off + lt, pos + 1)
                out[i, f] = v
        elif code in (_MAX, _MIN):
            is_max = code == _MAX
            fr = ci[wlay[u, WL_FMAX if is_max else WL_FMIN]]
            if fr == NONE or fr > p:
                # T's max lies after the row in time: says nothing about O's (rare for
                # random amounts, always for a rising max ramp)
                out[i, f], scratch = _scan_value(code, arena_a, arena_m, off + lt, pos, scratch)
            else:
                # T's max is in O, so it is the max of O's rows in T
                best = arena_a[off + fr]
                for q in range(lt, lo):
                    v = arena_a[off + q]
                    if (v > best) if is_max else (v < best):
                        best = v
                out[i, f] = best
        else:
            # distinct(O) = |T's unflagged| + |L's unflagged| - |R's unflagged| + rows of R
            # whose previous occurrence is in O (the first occurrence after p of a merchant
            # O has too): every merchant of a set reaching ``end`` has its last occurrence,
            # the one unflagged row, in it
            d = ci[wlay[u, WL_DIST]]
            for q in range(lt, lo):
                if ring[q & mask, fcol] == 0:
                    d += 1
            for q in range(p + 1, end):
                if ring[q & mask, fcol] == 0:
                    d -= 1
                dq = ring[q & mask, lc]
                if dq > 0 and lt <= q - dq <= p:
                    d += 1
            out[i, f] = float(d)
    return scratch


@njit(cache=True)
def _rebuild(
    e: int,
    uwin: np.ndarray,
    wlay: np.ndarray,
    glay: np.ndarray,
    tune: np.ndarray,
    seg: np.ndarray,
    arena_t: np.ndarray,
    arena_a: np.ndarray,
    arena_m: np.ndarray,
    xi,
    xf,
    xr,
    dmap,
    meta: np.ndarray,
) -> None:
    """Compute a newly promoted entity's incremental state from its rows, anchored at TMAX."""
    s = seg[e, XSLOT]
    ci = xi[s]
    cf = xf[s]
    ring = xr[s]
    length = seg[e, LEN]
    ring = _ring_fit(xr, s, ci, ring, 0, 0, length, meta)  # contents are recomputed below
    mask = ci[X_MASK]
    seq = ci[X_SEQ]
    first = seg[e, BASE] + seg[e, HEAD]
    off = first - seq
    end = seq + length
    tm = seg[e, TMAX]
    nu = uwin.shape[0]
    for u in range(nu):
        bound = tm - uwin[u]
        a = first
        b = first + length
        while a < b:
            mid = (a + b) >> 1
            if arena_t[mid] > bound:
                b = mid
            else:
                a = mid + 1
        ci[wlay[u, WL_LO]] = a - off
        c = wlay[u, WL_SUM]
        if c >= 0:
            _acc_fill(cf, c, wlay[u, WL_SQ] > 0, arena_a, a, first + length)
    rc = glay[GL_RUN]
    if rc >= 0:
        for j in range(seq, end):
            _set_run(ring, mask, rc, arena_a, off, seq, j)
    for which in (GL_PMAX, GL_PMIN):
        pc = glay[which]
        if pc < 0:
            continue
        for j in range(seq, end):
            _stack_push(arena_a, ring, mask, pc, which == GL_PMAX, off, seq, j)
        fc = WL_FMAX if which == GL_PMAX else WL_FMIN
        for u in range(nu):
            c = wlay[u, fc]
            if c < 0:
                continue
            lo = ci[wlay[u, WL_LO]]
            if lo >= end:
                ci[c] = NONE
                continue
            f = end - 1
            while True:
                d = ring[f & mask, pc]
                if d == 0 or f - d < lo:
                    break
                f -= d
            ci[c] = f
    dm = glay[GL_DMAX]
    if dm >= 0:
        # flags and previous-occurrence links over all live rows (a late row's window may
        # start before the longest window's start)
        fcol = glay[GL_NRC] - 1
        lc = glay[GL_PREV]
        for q in range(seq, end):
            ring[q & mask, fcol] = 0
            ring[q & mask, lc] = 0
        if length <= _DISTINCT_NAIVE_MAX:
            for q in range(seq, end):
                v = arena_m[off + q]
                for r in range(q + 1, end):
                    if arena_m[off + r] == v:
                        ring[q & mask, fcol] = 1
                        ring[r & mask, lc] = r - q
                        break
        else:
            idx = np.argsort(arena_m[first : first + length], kind="mergesort")  # stable
            for z in range(length - 1):
                if arena_m[first + idx[z]] == arena_m[first + idx[z + 1]]:
                    ring[(seq + idx[z]) & mask, fcol] = 1
                    ring[(seq + idx[z + 1]) & mask, lc] = idx[z + 1] - idx[z]
        for u in range(nu):
            c = wlay[u, WL_DIST]
            if c < 0:
                continue
            nd = 0
            for q in range(ci[wlay[u, WL_LO]], end):
                if ring[q & mask, fcol] == 0:
                    nd += 1
            ci[c] = nd
        if length > tune[T_DIST_ON]:
            _dist_index(e, ci, ring, mask, fcol, arena_m, dmap, seq, end, off)


@njit(cache=True)
def _promote(
    e, uwin, wlay, glay, tune, seg, arena_t, arena_a, arena_m, xi, xf, xr, xfree, dmap, meta
) -> None:
    """Give entity e a side-storage slot and build its incremental state from its rows."""
    if len(xfree) > 0:
        s = xfree.pop()
    else:
        s = len(xi)
        xi.append(np.zeros(0, dtype=np.int64))
        xf.append(np.zeros(0, dtype=np.float64))
        xr.append(np.zeros((0, 1), dtype=np.int32))
    ci = np.zeros(glay[GL_NXI], dtype=np.int64)
    ci[X_MASK] = -1  # empty ring: _rebuild sizes it
    xi[s] = ci
    xf[s] = np.zeros(glay[GL_NXF], dtype=np.float64)
    xr[s] = np.zeros((0, glay[GL_NRC]), dtype=np.int32)
    meta[META_XBYTES] += 8 * (glay[GL_NXI] + glay[GL_NXF])
    seg[e, XSLOT] = s
    _rebuild(e, uwin, wlay, glay, tune, seg, arena_t, arena_a, arena_m, xi, xf, xr, dmap, meta)


@njit(cache=True)
def _demote(e, wlay, glay, seg, arena_m, xi, xf, xr, xfree, dmap, meta) -> None:
    """Drop entity e's incremental state (back to the scan path) and free its slot."""
    s = seg[e, XSLOT]
    ci = xi[s]
    ring = xr[s]
    if ci[X_DIDX] != 0:
        seq = ci[X_SEQ]
        off = seg[e, BASE] + seg[e, HEAD] - seq
        end = seq + seg[e, LEN]
        _dist_unindex(e, ci, ring, ci[X_MASK], glay[GL_NRC] - 1, arena_m, dmap, seq, end, off)
    meta[META_XBYTES] -= 8 * (glay[GL_NXI] + glay[GL_NXF]) + ring.shape[0] * ring.shape[1] * 4
    xi[s] = np.zeros(0, dtype=np.int64)
    xf[s] = np.zeros(0, dtype=np.float64)
    xr[s] = np.zeros((0, 1), dtype=np.int32)
    xfree.append(s)
    seg[e, XSLOT] = NONE


# ---------------------------------------------------------------------------- main kernel


@njit(cache=True)
def process_events(
    ent: np.ndarray,  # int64[n] dense entity index
    t: np.ndarray,  # int64[n] event time, ms
    amt: np.ndarray,  # float64[n]
    mer: np.ndarray,  # int64[n]
    start: int,  # first event index to process (resume point)
    agg: np.ndarray,  # int64[F]
    win_id: np.ndarray,  # int64[F]
    uwin: np.ndarray,  # int64[U]
    wlay: np.ndarray,  # int64[U, WL_COLS]
    glay: np.ndarray,  # int64[GL_SIZE]
    slot: np.ndarray,  # int64[F]
    halflife: np.ndarray,  # float64[K]
    tune: np.ndarray,  # int64[5] (tuning_array())
    lateness_ms: int,
    retention_ms: int,
    min_seg: int,
    seg: np.ndarray,  # int64[E, SEG_COLS]
    ewm: np.ndarray,  # float64[E, 2K]
    arena_t: np.ndarray,  # int64[A]
    arena_a: np.ndarray,  # float64[A]
    arena_m: np.ndarray,  # int64[A]
    xi,  # side storage (new_side())
    xf,
    xr,
    xfree,
    dmap,  # typed.Dict[(int64, int64), int64] (new_dist_map())
    meta: np.ndarray,  # int64[META_SIZE] (used, garbage, requested capacity, side bytes)
    out: np.ndarray,  # float64[n, F]
    late: np.ndarray,  # bool[n]
) -> int:
    """Process events ``start..n-1`` in order; return n, or the index where the arena ran out.

    On an early return ``meta[META_REQUEST]`` holds the block size that did not fit (more
    than ``MAX_BLOCK`` if the entity cannot grow at all).
    """
    n = ent.shape[0]
    nf = agg.shape[0]
    nk = halflife.shape[0]
    nu = uwin.shape[0]
    arena_size = arena_t.shape[0]
    dm = glay[GL_DMAX]
    fcol = glay[GL_NRC] - 1
    lcol = glay[GL_PREV]
    rc = glay[GL_RUN]
    lo_cache = np.empty(nu, dtype=np.int64)
    scratch = np.empty(64, dtype=np.int64)
    late_ok = np.empty(nu, dtype=np.bool_)
    late_acc = np.empty(4 * nu, dtype=np.float64)
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
        in_order = not seen or ti >= tmax
        new_tmax = ti if in_order else tmax

        # -- rows no future accepted event can see: counted now, evicted once room is sure
        base = seg[e, BASE]
        head = seg[e, HEAD]
        length = seg[e, LEN]
        cap = seg[e, CAP]
        horizon = new_tmax - lateness_ms - retention_ms
        k = 0
        while k < length and arena_t[base + head + k] <= horizon:
            k += 1
        live = length - k
        new_head = head + k if live > 0 else 0
        new_cap = cap
        if new_head + live == cap and new_head == 0:
            new_cap = max(min_seg, cap + max(cap >> 1, 1))
            if new_cap > MAX_BLOCK or meta[META_USED] + new_cap > arena_size:
                meta[META_REQUEST] = new_cap
                return i  # nothing of event i applied yet

        xs = seg[e, XSLOT]
        if xs >= 0:
            ci = xi[xs]
            cf = xf[xs]
            ring = xr[xs]
            mask = ci[X_MASK]
            seq = ci[X_SEQ]
            off = base + head - seq  # logical row L is at arena index off + L
            end = seq + length
            if in_order:
                # -- slide every window to (ti - w, ti]: rows leave (still in the arena)
                for u in range(nu):
                    bound = ti - uwin[u]
                    lc = wlay[u, WL_LO]
                    lo = ci[lc]
                    lo0 = lo
                    c = wlay[u, WL_SUM]
                    sq = wlay[u, WL_SQ] > 0
                    dc = wlay[u, WL_DIST]
                    while lo < end and arena_t[off + lo] <= bound:
                        if c >= 0:
                            _acc_sub(cf, c, sq, arena_a[off + lo])
                        if dc >= 0 and ring[lo & mask, fcol] == 0:
                            ci[dc] -= 1
                        lo += 1
                    if lo == lo0:
                        continue
                    ci[lc] = lo
                    if c >= 0 and lo == end:
                        # empty window: restart from exact zeros, so rounding residue never
                        # outlives a quiet spell (test_kernels::test_hot_user_matches_pandas)
                        _acc_fill(cf, c, sq, arena_a, 0, 0)
                    for fc, pc in ((WL_FMAX, glay[GL_PMAX]), (WL_FMIN, glay[GL_PMIN])):
                        col = wlay[u, fc]
                        if col < 0:
                            continue
                        f = ci[col]
                        if f != NONE:
                            while f < lo and f < end - 1:
                                d = ring[f & mask, pc + 1]
                                if d <= 0:  # cannot happen; never spin on a broken link
                                    break
                                f += d
                            if f < lo:
                                f = NONE
                            ci[col] = f
            if k > 0 and dm >= 0 and ci[X_DIDX] != 0:
                # the map holds the last occurrence of every live row's merchant: entries
                # leave with their rows
                for q in range(seq, seq + k):
                    if ring[q & mask, fcol] == 0:
                        dmap.pop((e, arena_m[off + q]), NONE)
            ci[X_SEQ] = seq + k

        # -- evict
        if k > 0:
            seg[e, EVICTED] = arena_t[base + head + k - 1]
        head = new_head
        length = live

        # -- make room for one more row
        if head + length == cap:
            if head > 0:
                # slide live rows to the block start (forward copy, dest < src)
                for j in range(length):
                    arena_t[base + j] = arena_t[base + head + j]
                    arena_a[base + j] = arena_a[base + head + j]
                    arena_m[base + j] = arena_m[base + head + j]
                head = 0
            else:
                used = meta[META_USED]
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
        seg[e, HEAD] = head

        # -- insert after all rows with time <= ti (upper bound => arrival order breaks ties)
        first = base + head
        pos = first + length
        while pos > first and arena_t[pos - 1] > ti:
            arena_t[pos] = arena_t[pos - 1]
            arena_a[pos] = arena_a[pos - 1]
            arena_m[pos] = arena_m[pos - 1]
            pos -= 1
        x = amt[i]
        arena_t[pos] = ti
        arena_a[pos] = x
        arena_m[pos] = mer[i]
        length += 1
        seg[e, LEN] = length

        # -- ewm state, referenced to the entity's max time (reads amount: the only column
        # spec validation allows for ewm_mean)
        if nk > 0:
            if not seen:
                for q in range(nk):
                    ewm[e, 2 * q] = x
                    ewm[e, 2 * q + 1] = 1.0
            elif ti >= tmax:
                for q in range(nk):
                    d = 0.5 ** ((ti - tmax) / halflife[q])
                    ewm[e, 2 * q] = ewm[e, 2 * q] * d + x
                    ewm[e, 2 * q + 1] = ewm[e, 2 * q + 1] * d + 1.0
            else:
                # late-but-accepted: weight as of tmax, value stays "as of tmax"
                # (guarded by test_kernels::test_out_of_order_vs_bruteforce)
                for q in range(nk):
                    wgt = 0.5 ** ((tmax - ti) / halflife[q])
                    ewm[e, 2 * q] += wgt * x
                    ewm[e, 2 * q + 1] += wgt
        seg[e, TMAX] = new_tmax

        if xs < 0:
            # -- scan path: a small entity. Which path computes a row changes only its
            # rounding; every path is checked against the oracles
            # (tests/features/conftest.py::TUNINGS forces each one)
            scratch = _scan_features(
                i, e, ti, first, pos, agg, win_id, uwin, slot, seg, ewm,
                arena_t, arena_a, arena_m, lo_cache, scratch, out,
            )  # fmt: skip
            if length > tune[T_PROMOTE]:
                _promote(
                    e, uwin, wlay, glay, tune, seg, arena_t, arena_a, arena_m,
                    xi, xf, xr, xfree, dmap, meta,
                )  # fmt: skip
            continue
        if not in_order:
            # -- out-of-order row of a promoted entity: folded into the state, then its
            # features derived from it (O(rows between it and TMAX), scan if that is more)
            _insert_late(
                e, pos, uwin, wlay, glay, tune, seg, arena_t, arena_a, arena_m,
                xi, xf, xr, dmap, meta,
            )  # fmt: skip
            scratch = _late_features(
                i, e, pos, agg, win_id, uwin, wlay, glay, slot, tune, seg, ewm,
                arena_t, arena_a, arena_m, xi, xf, xr, lo_cache, late_ok, late_acc,
                scratch, out,
            )  # fmt: skip
            if length < tune[T_DEMOTE]:
                _demote(e, wlay, glay, seg, arena_m, xi, xf, xr, xfree, dmap, meta)
            continue

        # -- incremental path: the row was appended as logical row j
        seq = ci[X_SEQ]
        off = first - seq
        j = seq + length - 1
        end = j + 1
        if length > mask + 1:
            # ring full: double it (rows keep their logical numbers)
            ring = _ring_fit(xr, xs, ci, ring, seq, j, length, meta)
            mask = ci[X_MASK]
        ring[j & mask, fcol] = 0
        if rc >= 0:
            _set_run(ring, mask, rc, arena_a, off, seq, j)
        for u in range(nu):
            c = wlay[u, WL_SUM]
            if c >= 0:
                sq = wlay[u, WL_SQ] > 0
                _acc_add(cf, c, sq, x)
                if not (np.isfinite(cf[c]) and (not sq or np.isfinite(cf[c + 2]))):
                    # an amount near float64 overflow (x*x = inf): recompute instead of
                    # letting inf - inf poison the sums once it leaves
                    # (test_kernels::test_huge_amount_does_not_poison_sums)
                    _acc_fill(cf, c, sq, arena_a, off + ci[wlay[u, WL_LO]], off + end)
        for which in (GL_PMAX, GL_PMIN):
            pc = glay[which]
            if pc < 0:
                continue
            p = _stack_push(arena_a, ring, mask, pc, which == GL_PMAX, off, seq, j)
            fc = WL_FMAX if which == GL_PMAX else WL_FMIN
            for u in range(nu):
                col = wlay[u, fc]
                if col >= 0 and (ci[col] == NONE or ci[col] > p):
                    ci[col] = j  # the front and everything after it were dominated
        if dm >= 0:
            mm = mer[i]
            indexed = ci[X_DIDX] != 0
            p = NONE
            if indexed:
                p = dmap.get((e, mm), NONE)
                if p < seq:  # (entries leave with their rows: cannot happen)
                    p = NONE
                dmap[(e, mm)] = j
            else:
                q = j - 1
                while q >= seq:
                    if arena_m[off + q] == mm:
                        p = q
                        break
                    q -= 1
            if p != NONE:
                ring[p & mask, fcol] = 1
            ring[j & mask, lcol] = 0 if p == NONE else j - p
            for u in range(nu):
                dc = wlay[u, WL_DIST]
                if dc >= 0 and p < ci[wlay[u, WL_LO]]:  # NONE is before every window
                    ci[dc] += 1
            live = end - seq
            if not indexed and live > tune[T_DIST_ON]:
                _dist_index(e, ci, ring, mask, fcol, arena_m, dmap, seq, end, off)
            elif indexed and live < tune[T_DIST_OFF]:
                _dist_unindex(e, ci, ring, mask, fcol, arena_m, dmap, seq, end, off)

        # -- features from the incremental state
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
            lo = ci[wlay[u, WL_LO]]
            cnt = end - lo
            if code == _COUNT:
                out[i, f] = float(cnt)
            elif code in (_SUM, _MEAN):
                # hi == fl(hi + lo): the sum rounded once, however many rows came and went
                # (test_kernels::test_hot_user_matches_pandas: sums next to 1e9 spikes)
                s = cf[wlay[u, WL_SUM]]
                out[i, f] = s if code == _SUM else s / cnt
            elif code == _STD:
                if j - ring[j & mask, rc] <= lo:
                    # every row of the window holds the same amount: exactly 0.0, as pandas
                    # (test_kernels::test_hot_user_matches_pandas, constant runs)
                    out[i, f] = 0.0
                else:
                    c = wlay[u, WL_SUM]
                    v = _dd_std(cf[c], cf[c + 1], cf[c + 2], cf[c + 3], cnt)
                    if not np.isfinite(v):
                        v = _two_pass_std(arena_a, off + lo, off + end)
                    out[i, f] = v
            elif code == _MAX:
                out[i, f] = arena_a[off + ci[wlay[u, WL_FMAX]]]
            elif code == _MIN:
                out[i, f] = arena_a[off + ci[wlay[u, WL_FMIN]]]
            else:
                out[i, f] = float(ci[wlay[u, WL_DIST]])
        if length < tune[T_DEMOTE]:
            _demote(e, wlay, glay, seg, arena_m, xi, xf, xr, xfree, dmap, meta)
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
    destination is <= its source (no second arena => peak memory stays ~1x). Side storage
    is indexed by logical row numbers, so it does not care where rows live.
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


@njit(cache=True)
def gather_sums(seg: np.ndarray, promoted: np.ndarray, xf, out: np.ndarray) -> None:
    """Running sums of the promoted entities (in ``promoted`` order) into out (snapshot)."""
    for r in range(promoted.shape[0]):
        out[r, :] = xf[seg[promoted[r], XSLOT]]


@njit(cache=True)
def restore_promoted(
    promoted: np.ndarray,  # int64 entity indices
    sums: np.ndarray,  # float64[len(promoted), n_xf]
    uwin: np.ndarray,
    wlay: np.ndarray,
    glay: np.ndarray,
    tune: np.ndarray,
    seg: np.ndarray,
    arena_t: np.ndarray,
    arena_a: np.ndarray,
    arena_m: np.ndarray,
    xi,
    xf,
    xr,
    xfree,
    dmap,
    meta: np.ndarray,
) -> None:
    """Restore path: promote the snapshot's promoted entities (state rebuilt from their
    rows), then put back their running sums, the one part not derived from the rows."""
    for r in range(promoted.shape[0]):
        e = promoted[r]
        _promote(
            e, uwin, wlay, glay, tune, seg, arena_t, arena_a, arena_m,
            xi, xf, xr, xfree, dmap, meta,
        )  # fmt: skip
        xf[seg[e, XSLOT]][:] = sums[r]
