"""Incremental path: O(1) amortized state of *promoted* entities (long histories).

Promotion (an entity holding more than ``Tuning.promote_above`` rows) rebuilds the state
from the retained rows (:func:`rebuild`); an entity is demoted (state dropped) once it holds
fewer than ``Tuning.demote_below`` rows. In-order events (``t >= tmax_e``) then cost O(1)
amortized however many rows the window holds (the per-event updates are in
:func:`features.kernels.driver.process_events`):

- per window length: a start pointer advanced monotonically (two pointers); ``count``.
- sum/mean/std: double-double (~106-bit, :mod:`features.kernels.ddarith`) running sums of
  ``x`` and of ``x*x`` (the square split exactly with Dekker's product), added on append and
  subtracted when a row leaves; ``var = (n*Sxx - Sx**2) / n**2`` evaluated in double-double.
  A window whose rows all hold the same amount (per row: how many rows right before it hold
  its amount) yields exactly 0.0, as pandas does. Sums restart from exact zeros when a
  window empties and are recomputed from the window's rows if they stop being finite.
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
- quantile: per window a Fenwick tree of QB log-bucket counts in the side storage (rows
  added on append, removed when they leave; the rank's bucket found in O(log QB)).
- count_same: per window a hash map (entity * U + window, merchant) -> rows, entries
  leaving at zero and with the entity on demotion.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from features.kernels.ddarith import acc_fill
from features.kernels.layout import (
    BASE,
    GL_DMAX,
    GL_NRC,
    GL_NXF,
    GL_NXI,
    GL_PMAX,
    GL_PMIN,
    GL_PREV,
    GL_RUN,
    HEAD,
    LEN,
    META_XBYTES,
    NONE,
    QB,
    TMAX,
    WL_DIST,
    WL_FMAX,
    WL_FMIN,
    WL_LO,
    WL_QFEN,
    WL_SAME,
    WL_SQ,
    WL_SUM,
    X_DIDX,
    X_MASK,
    X_SEQ,
    XSLOT,
    EncodedSpecs,
    KernelState,
    Tuning,
)
from features.kernels.quantile import bucket, fen_add
from features.kernels.scan import DISTINCT_NAIVE_MAX, first_after

MIN_RING = 16


@njit(cache=True, inline="always")
def stack_push(
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
def dist_index(e: int, ci, ring, mask: int, fcol: int, arena_m, dmap, lo, end, off) -> None:
    """Map (e, merchant) -> last occurrence for the merchants of logical rows [lo, end)."""
    for q in range(lo, end):
        if ring[q & mask, fcol] == 0:
            dmap[(e, arena_m[off + q])] = q
    ci[X_DIDX] = 1


@njit(cache=True)
def dist_unindex(e: int, ci, ring, mask: int, fcol: int, arena_m, dmap, lo, end, off) -> None:
    """Remove the entity's map entries (exactly its window's last occurrences)."""
    for q in range(lo, end):
        if ring[q & mask, fcol] == 0:
            dmap.pop((e, arena_m[off + q]), NONE)
    ci[X_DIDX] = 0


@njit(cache=True)
def ring_fit(xr, s: int, ci, ring, seq: int, end: int, need: int, meta) -> np.ndarray:
    """The slot's ring, doubled (live logical rows [seq, end) copied) until it holds need."""
    if need <= ring.shape[0]:
        return ring
    cap = max(ring.shape[0], MIN_RING)
    while cap < need:
        cap *= 2
    return _ring_to(xr, s, ci, ring, seq, end, cap, meta)


@njit(cache=True)
def ring_trim(seg, n: int, xi, xr, meta) -> None:
    """Shrink each ring holding at least 4x its entity's live rows to the smallest power of
    two >= 2x them (>= MIN_RING).

    Rings only grow on the hot path, so without this an entity keeps the ring of its
    busiest spell: a merchant a hot user paid for a day kept 5.7x the ring its live rows
    need, one such merchant after another, and a 10-minute soak's RSS grew
    (test_state::test_rings_shrink_after_a_burst). Run at compaction, which is O(state)
    already; the 2x-4x hysteresis keeps a ring from shrinking and growing in turn.
    """
    for e in range(n):
        s = seg[e, XSLOT]
        if s < 0:
            continue
        ring = xr[s]
        length = seg[e, LEN]
        if ring.shape[0] <= MIN_RING or 4 * length > ring.shape[0]:
            continue
        cap = MIN_RING
        while cap < 2 * length:
            cap *= 2
        ci = xi[s]
        _ring_to(xr, s, ci, ring, ci[X_SEQ], ci[X_SEQ] + length, cap, meta)


@njit(cache=True)
def _ring_to(xr, s: int, ci, ring, seq: int, end: int, cap: int, meta) -> np.ndarray:
    """Replace the slot's ring by one of ``cap`` rows (a power of two >= end - seq), the
    live logical rows [seq, end) copied: rows keep their logical numbers, so links hold."""
    fresh = np.zeros((cap, ring.shape[1]), dtype=np.int32)
    if ring.shape[0] > 0:
        mask = ci[X_MASK]
        for q in range(seq, end):
            for c in range(ring.shape[1]):
                fresh[q & (cap - 1), c] = ring[q & mask, c]
    meta[META_XBYTES] += (cap - ring.shape[0]) * ring.shape[1] * 4
    xr[s] = fresh
    ci[X_MASK] = cap - 1
    return fresh


@njit(cache=True, inline="always")
def set_run(ring, mask: int, rc: int, arena_a, off: int, seq: int, q: int) -> None:
    """Ring column rc of logical row q: how many rows right before it hold its amount.

    The rows [q - run, q] are then equal, so a window [lo, q] is constant iff q - run <= lo
    (std exactly 0.0, as pandas). Capped at the live rows before q: a run reaching back
    past the oldest live row reaches every window start.
    """
    if q > seq and arena_a[off + q - 1] == arena_a[off + q]:
        ring[q & mask, rc] = min(ring[(q - 1) & mask, rc] + 1, q - seq)
    else:
        ring[q & mask, rc] = 0


@njit(cache=True, inline="always")
def same_add(cmap, key: int, merchant: int, d: int) -> None:
    """Add ``d`` to the rows of ``merchant`` in window ``key`` (entity * U + window); an
    entry leaves the map at zero, so the map holds only merchants in some window."""
    k = (key, merchant)
    v = (cmap[k] if k in cmap else 0) + d  # noqa: SIM401 (numba: get is Optional)
    if v > 0:
        cmap[k] = v
    else:
        cmap.pop(k, 0)


@njit(cache=True)
def rebuild(e: int, enc: EncodedSpecs, tuning: Tuning, st: KernelState) -> None:
    """Compute a newly promoted entity's incremental state from its rows, anchored at TMAX."""
    uwin, wlay, glay = enc.uwin, enc.wlay, enc.glay
    seg, arena_t, arena_a, arena_m = st.seg, st.arena_t, st.arena_a, st.arena_m
    s = seg[e, XSLOT]
    ci = st.xi[s]
    cf = st.xf[s]
    ring = st.xr[s]
    length = seg[e, LEN]
    ring = ring_fit(st.xr, s, ci, ring, 0, 0, length, st.meta)  # contents recomputed below
    mask = ci[X_MASK]
    seq = ci[X_SEQ]
    first = seg[e, BASE] + seg[e, HEAD]
    off = first - seq
    end = seq + length
    tm = seg[e, TMAX]
    nu = uwin.shape[0]
    for u in range(nu):
        a = first_after(arena_t, first, first + length, tm - uwin[u])
        ci[wlay[u, WL_LO]] = a - off
        c = wlay[u, WL_SUM]
        if c >= 0:
            acc_fill(cf, c, wlay[u, WL_SQ] > 0, arena_a, a, first + length)
        qc = wlay[u, WL_QFEN]
        if qc >= 0:
            ci[qc : qc + QB] = 0
            for j in range(a, first + length):
                fen_add(ci, qc, bucket(arena_a[j]), 1)
        if wlay[u, WL_SAME] > 0:
            for j in range(a, first + length):
                same_add(st.cmap, e * nu + u, arena_m[j], 1)
    rc = glay[GL_RUN]
    if rc >= 0:
        for j in range(seq, end):
            set_run(ring, mask, rc, arena_a, off, seq, j)
    for which in (GL_PMAX, GL_PMIN):
        pc = glay[which]
        if pc < 0:
            continue
        for j in range(seq, end):
            stack_push(arena_a, ring, mask, pc, which == GL_PMAX, off, seq, j)
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
        if length <= DISTINCT_NAIVE_MAX:
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
        if length > tuning.dist_index_above:
            dist_index(e, ci, ring, mask, fcol, arena_m, st.dmap, seq, end, off)


@njit(cache=True)
def promote(e: int, enc: EncodedSpecs, tuning: Tuning, st: KernelState) -> None:
    """Give entity e a side-storage slot and build its incremental state from its rows."""
    glay = enc.glay
    xi, xf, xr, xfree = st.xi, st.xf, st.xr, st.xfree
    if len(xfree) > 0:
        s = xfree.pop()
    else:
        s = len(xi)
        xi.append(np.zeros(0, dtype=np.int64))
        xf.append(np.zeros(0, dtype=np.float64))
        xr.append(np.zeros((0, 1), dtype=np.int32))
    ci = np.zeros(glay[GL_NXI], dtype=np.int64)
    ci[X_MASK] = -1  # empty ring: rebuild sizes it
    xi[s] = ci
    xf[s] = np.zeros(glay[GL_NXF], dtype=np.float64)
    xr[s] = np.zeros((0, glay[GL_NRC]), dtype=np.int32)
    st.meta[META_XBYTES] += 8 * (glay[GL_NXI] + glay[GL_NXF])
    st.seg[e, XSLOT] = s
    rebuild(e, enc, tuning, st)


@njit(cache=True)
def demote(e: int, enc: EncodedSpecs, st: KernelState) -> None:
    """Drop entity e's incremental state (back to the scan path) and free its slot."""
    glay = enc.glay
    seg = st.seg
    s = seg[e, XSLOT]
    ci = st.xi[s]
    ring = st.xr[s]
    wlay = enc.wlay
    nu = wlay.shape[0]
    first = seg[e, BASE] + seg[e, HEAD]
    for u in range(nu):
        if wlay[u, WL_SAME] > 0:
            # the window's merchants leave the map (a scan-path entity keeps no counts)
            for j in range(first + ci[wlay[u, WL_LO]] - ci[X_SEQ], first + seg[e, LEN]):
                st.cmap.pop((e * nu + u, st.arena_m[j]), 0)
    if ci[X_DIDX] != 0:
        seq = ci[X_SEQ]
        off = seg[e, BASE] + seg[e, HEAD] - seq
        end = seq + seg[e, LEN]
        fcol = glay[GL_NRC] - 1
        dist_unindex(e, ci, ring, ci[X_MASK], fcol, st.arena_m, st.dmap, seq, end, off)
    st.meta[META_XBYTES] -= 8 * (glay[GL_NXI] + glay[GL_NXF]) + ring.shape[0] * ring.shape[1] * 4
    st.xi[s] = np.zeros(0, dtype=np.int64)
    st.xf[s] = np.zeros(0, dtype=np.float64)
    st.xr[s] = np.zeros((0, 1), dtype=np.int32)
    st.xfree.append(s)
    seg[e, XSLOT] = NONE
