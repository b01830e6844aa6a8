"""The batch driver: :func:`process_events`, the one kernel a :class:`WindowState` calls.

This is the *contract* shared by the stream worker and the batch backfill: both feed events
to :func:`process_events` in the same order, so they produce bit-identical features.

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
* **Idle entities start afresh** (``Config.idle_ms`` >= 0): an event more than ``idle_ms``
  after its entity's newest time finds the entity as if never seen (no rows, which are out
  of every window by then anyway; ``since_last`` -1.0; the ewm restarts). Depending only on
  the entity's own sequence, this is what lets an idle entity be dropped from memory
  without changing any row (``WindowState``).
* ``ewm_mean``: O(1) state per entity: numerator/denominator referenced to ``tmax_e``.
  In order it equals pandas ``ewm(halflife=Timedelta(h ms), times=..., adjust=True).mean()``.
  A late-but-accepted event (``t < tmax_e``) is added with weight ``0.5 ** ((tmax_e - t) / h)``
  and the emitted value is the entity's value *as of tmax_e* (O(1) state cannot exclude
  "future" events; documented divergence from the windowed aggregates).
* sum/mean/std (population, ddof=0; 0.0 for one event), max/min, ``first`` (the amount of
  the window's earliest row, ties by arrival) and ``quantile`` read ``amount``; distinct and
  ``count_same`` (rows of the window whose merchant is this event's) read ``merchant_id``
  (the only columns spec validation allows for them).
* ``quantile``: the nearest-rank percentile on log buckets, within 1.6 % of the exact one
  (:mod:`features.kernels.quantile` states the definition and the bound).
* ``last``: this event's own amount or merchant.

Algorithms
----------
Results depend only on the event sequence (never on batch boundaries, arena layout or
snapshot/restore points; the :class:`~features.kernels.layout.Tuning` is a code constant,
shared by stream and backfill, and only moves the last bits of sums), but how a row is
computed depends on the entity's history size: the scan path
(:mod:`features.kernels.scan`) for small entities, the incremental path
(:mod:`features.kernels.incremental`) for promoted ones, and out-of-order rows of promoted
entities derived from their state (:mod:`features.kernels.late`).

Per event the driver evicts rows no future accepted event can see, makes room for one more
row (a full block is relocated to the arena end with 1.5x capacity), inserts the row in
time order, updates the ewm state and dispatches to one of the three paths. When the arena
itself is full it returns the index of the first unprocessed event (state untouched for it)
and the Python layer compacts/grows the arena and resumes: no event is ever lost or applied
twice.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from features.kernels.ddarith import acc_add, acc_fill, acc_sub, dd_std
from features.kernels.incremental import (
    demote,
    dist_index,
    dist_unindex,
    promote,
    ring_fit,
    same_add,
    set_run,
    stack_push,
)
from features.kernels.late import insert_late, late_features
from features.kernels.layout import (
    BASE,
    CAP,
    COUNT,
    COUNT_SAME,
    EVICTED,
    EWM_MEAN,
    FIRST,
    GL_DMAX,
    GL_NRC,
    GL_PMAX,
    GL_PMIN,
    GL_PREV,
    GL_RUN,
    HEAD,
    LAST,
    LEN,
    MAX,
    MAX_BLOCK,
    MEAN,
    META_GARBAGE,
    META_REQUEST,
    META_USED,
    MIN,
    NO_TIME,
    NONE,
    QUANTILE,
    SINCE_LAST,
    STD,
    SUM,
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
    Config,
    EncodedSpecs,
    Events,
    KernelState,
)
from features.kernels.quantile import bucket, fen_add, fen_find, rank, representative
from features.kernels.scan import scan_features, two_pass_std, unwindowed


@njit(cache=True, nogil=True)  # shards run in threads (features/shards.py)
def process_events(
    ev: Events,
    start: int,  # first event index to process (resume point)
    enc: EncodedSpecs,
    cfg: Config,
    st: KernelState,
    out: np.ndarray,  # float64[n, F]
    late: np.ndarray,  # bool[n]
) -> int:
    """Process events ``start..n-1`` in order; return n, or the index where the arena ran out.

    On an early return ``meta[META_REQUEST]`` holds the block size that did not fit (more
    than ``MAX_BLOCK`` if the entity cannot grow at all).
    """
    # The loop below takes the arrays one by one rather than reading them from the tuples:
    # bound from tuple fields inside the kernel, the same loop ran ~25% slower (uniform
    # activity, every row on the scan path; interleaved A/B against the previous module).
    return _event_loop(
        ev.ent, ev.t, ev.amt, ev.mer, start,
        enc.agg, enc.win_id, enc.uwin, enc.wlay, enc.glay, enc.slot, enc.halflife, enc.param,
        st.seg, st.ewm, st.meta, st.arena_t, st.arena_a, st.arena_m, st.xi, st.xf, st.xr,
        st.dmap, st.cmap, enc, cfg, st, out, late,
    )  # fmt: skip


@njit(cache=True)
def _start_afresh(e: int, enc: EncodedSpecs, st: KernelState) -> None:
    """Entity ``e`` as if never seen (its block stays allocated: layout changes no row)."""
    if st.seg[e, XSLOT] >= 0:
        demote(e, enc, st)  # reads the rows: before they go
    st.seg[e, TMAX] = NO_TIME
    st.seg[e, EVICTED] = NO_TIME
    st.seg[e, HEAD] = 0
    st.seg[e, LEN] = 0
    st.ewm[e, :] = 0.0


@njit(cache=True)
def _event_loop(
    ent, t, amt, mer, start,  # the batch (Events), resume point
    agg, win_id, uwin, wlay, glay, slot, halflife, param,  # EncodedSpecs' arrays
    seg, ewm, meta, arena_t, arena_a, arena_m, xi, xf, xr, dmap, cmap,  # KernelState's
    enc, cfg, st,  # the tuples themselves, for the calls off the per-event path
    out, late,
) -> int:  # fmt: skip
    """The per-event loop of :func:`process_events` (same arguments, unpacked)."""
    retention_ms = enc.retention_ms
    lateness_ms, min_seg, tuning = cfg.lateness_ms, cfg.min_seg, cfg.tuning
    idle_ms = cfg.idle_ms
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
    derive = np.empty(nu, dtype=np.bool_)  # late rows: window derived from the state
    acc = np.empty(4 * nu, dtype=np.float64)  # late rows: their own windows' sums
    for i in range(start, n):
        e = ent[i]
        ti = t[i]
        tmax = seg[e, TMAX]
        seen = tmax != NO_TIME
        if seen and idle_ms >= 0 and ti - tmax > idle_ms:
            _start_afresh(e, enc, st)
            tmax = NO_TIME
            seen = False
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
                    qc = wlay[u, WL_QFEN]
                    same = wlay[u, WL_SAME] > 0
                    while lo < end and arena_t[off + lo] <= bound:
                        if c >= 0:
                            acc_sub(cf, c, sq, arena_a[off + lo])
                        if dc >= 0 and ring[lo & mask, fcol] == 0:
                            ci[dc] -= 1
                        if qc >= 0:
                            fen_add(ci, qc, bucket(arena_a[off + lo]), -1)
                        if same:
                            same_add(cmap, e * nu + u, arena_m[off + lo], -1)
                        lo += 1
                    if lo == lo0:
                        continue
                    ci[lc] = lo
                    if c >= 0 and lo == end:
                        # empty window: restart from exact zeros, so rounding residue never
                        # outlives a quiet spell (test_kernels::test_hot_user_matches_pandas)
                        acc_fill(cf, c, sq, arena_a, 0, 0)
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
            scratch = scan_features(
                i, e, ti, first, pos, agg, win_id, uwin, slot, param, seg, ewm,
                arena_t, arena_a, arena_m, lo_cache, scratch, out,
            )  # fmt: skip
            if length > tuning.promote_above:
                promote(e, enc, tuning, st)
            continue
        if not in_order:
            # -- out-of-order row of a promoted entity: folded into the state, then its
            # features derived from it (O(rows between it and TMAX), scan if that is more)
            # (the arrays, not the tuples: a tuple's fields bound per late row cost ~8%)
            insert_late(
                e, pos, uwin, wlay, glay, tuning, seg, arena_t, arena_a, arena_m,
                xi, xf, xr, dmap, cmap, meta,
            )  # fmt: skip
            scratch = late_features(
                i, e, pos, agg, win_id, uwin, wlay, glay, slot, param, tuning, seg, ewm,
                arena_t, arena_a, arena_m, xi, xf, xr, cmap, lo_cache, derive, acc, scratch,
                out,
            )  # fmt: skip
            if length < tuning.demote_below:
                demote(e, enc, st)
            continue

        # -- incremental path: the row was appended as logical row j
        seq = ci[X_SEQ]
        off = first - seq
        j = seq + length - 1
        end = j + 1
        if length > mask + 1:
            # ring full: double it (rows keep their logical numbers)
            ring = ring_fit(xr, xs, ci, ring, seq, j, length, meta)
            mask = ci[X_MASK]
        ring[j & mask, fcol] = 0
        if rc >= 0:
            set_run(ring, mask, rc, arena_a, off, seq, j)
        for u in range(nu):
            qc = wlay[u, WL_QFEN]
            if qc >= 0:
                fen_add(ci, qc, bucket(x), 1)
            if wlay[u, WL_SAME] > 0:
                same_add(cmap, e * nu + u, mer[i], 1)
            c = wlay[u, WL_SUM]
            if c >= 0:
                sq = wlay[u, WL_SQ] > 0
                acc_add(cf, c, sq, x)
                if not (np.isfinite(cf[c]) and (not sq or np.isfinite(cf[c + 2]))):
                    # an amount near float64 overflow (x*x = inf): recompute instead of
                    # letting inf - inf poison the sums once it leaves
                    # (test_kernels::test_huge_amount_does_not_poison_sums)
                    acc_fill(cf, c, sq, arena_a, off + ci[wlay[u, WL_LO]], off + end)
        for which in (GL_PMAX, GL_PMIN):
            pc = glay[which]
            if pc < 0:
                continue
            p = stack_push(arena_a, ring, mask, pc, which == GL_PMAX, off, seq, j)
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
            if not indexed and live > tuning.dist_index_above:
                dist_index(e, ci, ring, mask, fcol, arena_m, dmap, seq, end, off)
            elif indexed and live < tuning.dist_unindex_below:
                dist_unindex(e, ci, ring, mask, fcol, arena_m, dmap, seq, end, off)

        # -- features from the incremental state
        for f in range(nf):
            code = agg[f]
            if code in (SINCE_LAST, EWM_MEAN, LAST):
                out[i, f] = unwindowed(
                    code, slot[f], param[f], e, ti, pos, first, arena_t, arena_a, arena_m,
                    seg, ewm,
                )  # fmt: skip
                continue
            u = win_id[f]
            lo = ci[wlay[u, WL_LO]]
            cnt = end - lo
            if code == COUNT:
                out[i, f] = float(cnt)
            elif code == FIRST:
                out[i, f] = arena_a[off + lo]
            elif code == QUANTILE:
                b = fen_find(ci, wlay[u, WL_QFEN], rank(param[f], cnt))
                out[i, f] = representative(b)
            elif code == COUNT_SAME:
                out[i, f] = float(cmap[(e * nu + u, mer[i])])
            elif code in (SUM, MEAN):
                # hi == fl(hi + lo): the sum rounded once, however many rows came and went
                # (test_kernels::test_hot_user_matches_pandas: sums next to 1e9 spikes)
                s = cf[wlay[u, WL_SUM]]
                out[i, f] = s if code == SUM else s / cnt
            elif code == STD:
                if j - ring[j & mask, rc] <= lo:
                    # every row of the window holds the same amount: exactly 0.0, as pandas
                    # (test_kernels::test_hot_user_matches_pandas, constant runs)
                    out[i, f] = 0.0
                else:
                    c = wlay[u, WL_SUM]
                    v = dd_std(cf[c], cf[c + 1], cf[c + 2], cf[c + 3], cnt)
                    if not np.isfinite(v):
                        v = two_pass_std(arena_a, off + lo, off + end)
                    out[i, f] = v
            elif code == MAX:
                out[i, f] = arena_a[off + ci[wlay[u, WL_FMAX]]]
            elif code == MIN:
                out[i, f] = arena_a[off + ci[wlay[u, WL_FMIN]]]
            else:
                out[i, f] = float(ci[wlay[u, WL_DIST]])
        if length < tuning.demote_below:
            demote(e, enc, st)
    return n
