"""Out-of-order events of promoted entities: inserted in time order, features derived.

A few per second in a real stream (producers interleave): the row (``t < tmax_e``) is
inserted in time order at logical row ``p`` and folded into the state anchored at ``tmax_e``
(:func:`insert_late`; O(rows after it): they move up one, as in the arena insert). Its own
window ``O = [lt, p]`` is then derived from the state (:func:`late_features`): with
``T = [lo, end)`` the ``tmax_e`` window, ``R = (p, end)`` the rows in ``(t, tmax_e]`` and
``L = [lt, lo)`` those in ``(t - w, tmax_e - w]``, ``O + R = L + T``, so a window costs
O(|R| + |L|), typically a few rows, instead of O(|O|):

- count from the pointers; sums(O) = sums(T) - sums(R) + sums(L) in double-double, the
  0.0 rule from the row's run length;
- max/min: T's max when it lies in O (at or before p), else the window is scanned (rare
  for random amounts: T's max must be one of the few rows of R);
- distinct(O) = unflagged(T) + unflagged(L) - unflagged(R) + the rows of R whose
  previous occurrence is in O (the first occurrence after p of a merchant O holds).

A window is scanned instead when ``Tuning.late_scan_factor * (|R| + |L|) > |O|`` (a row
far behind ``tmax_e``) or its sums are not finite.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from features.kernels.ddarith import acc_add, acc_fill, acc_sub, dd_std
from features.kernels.incremental import dist_index, dist_unindex, ring_fit, same_add, set_run
from features.kernels.layout import (
    BASE,
    COUNT,
    COUNT_SAME,
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
    MEAN,
    MIN,
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
)
from features.kernels.quantile import bucket, fen_add, fen_find, rank, representative
from features.kernels.scan import first_after, scan_value, two_pass_std, unwindowed


@njit(cache=True)
def insert_late(
    e, pos, uwin, wlay, glay, tuning, seg, arena_t, arena_a, arena_m, xi, xf, xr, dmap, cmap,
    meta,
) -> None:  # fmt: skip
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
    ring = ring_fit(xr, xs, ci, xr[xs], seq, end - 1, length, meta)
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
            if wlay[u, WL_QFEN] >= 0:
                fen_add(ci, wlay[u, WL_QFEN], bucket(x), 1)
            if wlay[u, WL_SAME] > 0:
                same_add(cmap, e * nu + u, mm, 1)
            c = wlay[u, WL_SUM]
            if c >= 0:
                sq = wlay[u, WL_SQ] > 0
                acc_add(cf, c, sq, x)
                if not (np.isfinite(cf[c]) and (not sq or np.isfinite(cf[c + 2]))):
                    acc_fill(cf, c, sq, arena_a, off + ci[wlay[u, WL_LO]], off + end)
    rc = glay[GL_RUN]
    if rc >= 0:
        # run lengths of the new row and of the rows after it, recomputed (distances to rows
        # before it grew by one)
        for q in range(p, end):
            set_run(ring, mask, rc, arena_a, off, seq, q)
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
        if not indexed and live > tuning.dist_index_above:
            dist_index(e, ci, ring, mask, fcol, arena_m, dmap, seq, end, off)
        elif indexed and live < tuning.dist_unindex_below:
            dist_unindex(e, ci, ring, mask, fcol, arena_m, dmap, seq, end, off)


@njit(cache=True)
def late_features(
    i, e, pos, agg, win_id, uwin, wlay, glay, slot, param, tuning, seg, ewm, arena_t, arena_a,
    arena_m, xi, xf, xr, cmap, lo_cache, derive, acc, scratch, out,
) -> np.ndarray:  # fmt: skip
    """Features of an out-of-order row of a promoted entity (arena index ``pos``, already
    folded in by :func:`insert_late`), derived from the state anchored at TMAX.

    Per window, with p the row's logical number: its own rows are O = [lt, p], the TMAX
    window is T = [lo, end), the rows after it (in time) R = (p, end) and L = [lt, lo), so
    O + R = L + T. A window costs O(|R| + |L|), usually a few rows, instead of O(|O|); it is
    scanned when ``tuning.late_scan_factor * (|R| + |L|) > |O|`` (a row far behind TMAX), when its
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
        lt = first_after(arena_t, first, min(pos, off + lo), ti - uwin[u]) - off
        lo_cache[u] = lt
        derive[u] = tuning.late_scan_factor * (n_after + lo - lt) <= p - lt + 1
        c = wlay[u, WL_SUM]
        if derive[u] and c >= 0:
            # sums(O) = sums(T) - sums(R) + sums(L), in double-double like the running sums
            sq = wlay[u, WL_SQ] > 0
            b = 4 * u
            for z in range(4 if sq else 2):
                acc[b + z] = cf[c + z]
            for q in range(p + 1, end):
                acc_sub(acc, b, sq, arena_a[off + q])
            for q in range(lt, lo):
                acc_add(acc, b, sq, arena_a[off + q])
            if not (np.isfinite(acc[b]) and (not sq or np.isfinite(acc[b + 2]))):
                # an amount near float64 overflow in T, R or L
                # (test_kernels::test_huge_amount_does_not_poison_sums)
                derive[u] = False
    fcol = glay[GL_NRC] - 1
    lc = glay[GL_PREV]
    rc = glay[GL_RUN]
    for f in range(agg.shape[0]):
        code = agg[f]
        if code in (SINCE_LAST, EWM_MEAN, LAST):
            out[i, f] = unwindowed(
                code, slot[f], param[f], e, ti, pos, first, arena_t, arena_a, arena_m, seg, ewm
            )
            continue
        u = win_id[f]
        lt = lo_cache[u]
        cnt = p - lt + 1
        if code == COUNT:
            out[i, f] = float(cnt)
            continue
        if code == FIRST:
            out[i, f] = arena_a[off + lt]
            continue
        if not derive[u]:
            out[i, f], scratch = scan_value(
                code, param[f], arena_a, arena_m, off + lt, pos, scratch
            )
            continue
        lo = ci[wlay[u, WL_LO]]
        b = 4 * u
        if code == QUANTILE:
            # counts(O) = counts(T) + counts(L) - counts(R): adjusted, read, put back
            qc = wlay[u, WL_QFEN]
            for q in range(lt, lo):
                fen_add(ci, qc, bucket(arena_a[off + q]), 1)
            for q in range(p + 1, end):
                fen_add(ci, qc, bucket(arena_a[off + q]), -1)
            out[i, f] = representative(fen_find(ci, qc, rank(param[f], cnt)))
            for q in range(lt, lo):
                fen_add(ci, qc, bucket(arena_a[off + q]), -1)
            for q in range(p + 1, end):
                fen_add(ci, qc, bucket(arena_a[off + q]), 1)
        elif code == COUNT_SAME:
            mm = arena_m[pos]
            key = (e * uwin.shape[0] + u, mm)
            same = cmap[key] if key in cmap else 0  # noqa: SIM401 (numba: get is Optional)
            for q in range(lt, lo):
                if arena_m[off + q] == mm:
                    same += 1
            for q in range(p + 1, end):
                if arena_m[off + q] == mm:
                    same -= 1
            out[i, f] = float(same)
        elif code in (SUM, MEAN):
            out[i, f] = acc[b] if code == SUM else acc[b] / cnt
        elif code == STD:
            if p - ring[p & mask, rc] <= lt:
                out[i, f] = 0.0  # rows all equal (test_kernels::test_late_row_breaks_constant_run)
            else:
                v = dd_std(acc[b], acc[b + 1], acc[b + 2], acc[b + 3], cnt)
                if not np.isfinite(v):
                    v = two_pass_std(arena_a, off + lt, pos + 1)
                out[i, f] = v
        elif code in (MAX, MIN):
            is_max = code == MAX
            fr = ci[wlay[u, WL_FMAX if is_max else WL_FMIN]]
            if fr == NONE or fr > p:
                # T's max lies after the row in time: says nothing about O's (rare for
                # random amounts, always for a rising max ramp)
                out[i, f], scratch = scan_value(
                    code, param[f], arena_a, arena_m, off + lt, pos, scratch
                )
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
