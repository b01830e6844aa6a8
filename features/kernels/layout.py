"""Layout and codes: the integer vocabulary the kernels dispatch on, and their argument tuples.

Aggregation codes are derived from ``features.spec`` (the codes are the positions in
``spec.AGGS``, whether an aggregation is windowed is ``spec.WINDOWED_AGGS``, the column it
reads is the one ``features/spec.py`` allows), so the spec is the one definition.

State layout
------------
Per entity ``e`` one row of ``seg[e, :]`` = (TMAX, EVICTED, BASE, HEAD, LEN, CAP, XSLOT) and
``ewm[e, 2k:2k+2]`` = (numerator, denominator) for each ewm spec ``k``. History lives in an
arena (``arena_t`` int64, ``arena_a`` float64, ``arena_m`` int64): entity ``e`` owns block
``[BASE, BASE + CAP)`` whose live rows are ``[BASE + HEAD, BASE + HEAD + LEN)``, sorted by
(time, arrival). Rows with ``time <= tmax_e - lateness_ms - max_window_ms`` can never be in a
future accepted event's window and are evicted; ``EVICTED`` keeps the newest evicted time so
``since_last`` stays exact (block relocation and compaction: :mod:`features.kernels.arena`).

A promoted entity (``XSLOT >= 0``) also owns slot ``XSLOT`` of the side storage (typed lists
``xi``, ``xf``, ``xr``, ``xfree`` of :class:`KernelState`): ``xi[s]`` int64 (X_SEQ: logical
number of the first live row, X_DIDX, X_MASK, then window pointers, fronts and distinct
counts), ``xf[s]`` float64 (double-double sums) and ``xr[s]`` int32 ``[C, GL_NRC]``, a ring
indexed by ``logical row & X_MASK`` holding per row the stack links, the previous-occurrence
link (0: none; a link to an evicted row, below X_SEQ, reads as none), the run length and the
distinct flag. Logical row ``L`` is at arena index ``BASE + HEAD + L - X_SEQ``. Links are
relative distances and pointers are logical, so relocation/compaction of the arena never
touches the side storage. Only the running sums depend on more than the rows; snapshots keep
them (and which entities are promoted) and :func:`features.kernels.arena.restore_promoted`
rebuilds the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numba.core import types
from numba.extending import typeof_impl

from features.spec import (
    _ALLOWED_COLUMNS,
    AGGS,
    DERIVED_AGGS,
    WINDOWED_AGGS,
    FeatureSpec,
    kernel_specs,
    max_window_ms,
    validate_specs,
)

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
WL_LO, WL_SUM, WL_SQ, WL_FMAX, WL_FMIN, WL_DIST, WL_QFEN, WL_SAME = range(8)
WL_COLS = 8
# quantile buckets (features.kernels.quantile): a Fenwick tree of QB counts per window
QB = 1024
# global layout slots (EncodedSpecs.glay)
GL_PMAX, GL_PMIN, GL_DMAX, GL_PREV, GL_RUN, GL_NXI, GL_NXF, GL_NRC = range(8)
GL_SIZE = 8

# ---------------------------------------------------------------------------- codes

# agg codes (kernel dispatch): positions in spec.AGGS; names are the public contract
AGG_CODES: dict[str, int] = {name: code for code, name in enumerate(AGGS)}
COUNT = AGG_CODES["count"]
SUM = AGG_CODES["sum"]
MEAN = AGG_CODES["mean"]
STD = AGG_CODES["std"]
MAX = AGG_CODES["max"]
MIN = AGG_CODES["min"]
DISTINCT = AGG_CODES["distinct"]
SINCE_LAST = AGG_CODES["since_last"]
EWM_MEAN = AGG_CODES["ewm_mean"]
FIRST = AGG_CODES["first"]
LAST = AGG_CODES["last"]
QUANTILE = AGG_CODES["quantile"]
COUNT_SAME = AGG_CODES["count_same"]

# The kernels compute since_last and ewm_mean from per-entity state, last from the event
# and every other aggregation over a window of rows (derived features are not theirs:
# features.derived); which column each reads is fixed in them: distinct and count_same read
# the other entity's id (arena_m: merchant_id in a user's rows, user_id in a merchant's),
# count and since_last no column, last either (EncodedSpecs.param),
# the rest amount (arena_a). A spec change that breaks this (another unwindowed aggregation,
# a widened column table) fails here, at import, instead of computing a wrong feature.
if set(AGGS) - WINDOWED_AGGS - DERIVED_AGGS != {"since_last", "ewm_mean", "last"}:
    raise ImportError(f"kernels: unknown unwindowed aggregation in {sorted(AGGS)}")
_READS: dict[str, tuple[str | None, ...]] = {
    "distinct": ("merchant_id", "user_id"),
    "count_same": ("merchant_id", "user_id"),
    "count": (None,),
    "since_last": (None,),
    "last": ("amount", "merchant_id"),
}
_WRONG = {
    a: c
    for a, c in _ALLOWED_COLUMNS.items()
    if a not in DERIVED_AGGS and c != _READS.get(a, ("amount",))
}
if _WRONG:
    raise ImportError(f"kernels: the column table in features/spec.py changed: {_WRONG}")


# ---------------------------------------------------------------------------- argument tuples


class Tuning(NamedTuple):
    """Thresholds (rows); performance only: every setting gives the same features up to float
    rounding (tests run the oracles with the extremes, see tests/features/conftest.py).

    A code constant shared by stream and backfill (:data:`DEFAULT_TUNING`), passed to the
    kernels as an argument (``WindowState(..., tuning=...)``).
    """

    # scan path while an entity holds <= this many rows, incremental path above
    promote_above: int = 32
    # back to the scan path below this many rows (hysteresis: no flapping)
    demote_below: int = 8
    # distinct: hash-map lookups once the entity holds more live rows ...
    dist_index_above: int = 64
    # ... and scanning again below this many
    dist_unindex_below: int = 16
    # an out-of-order row of a promoted entity: a window's features are derived from the
    # state while this factor times the rows to correct is at most the rows in the window,
    # else the window is scanned (0: always derive)
    late_scan_factor: int = 2


DEFAULT_TUNING = Tuning()


class EncodedSpecs(NamedTuple):
    """Specs lowered to the integer arrays the kernel dispatches on."""

    agg: np.ndarray  # int64[F] agg code
    win_id: np.ndarray  # int64[F] index into uwin (-1 if not windowed)
    uwin: np.ndarray  # int64[U] distinct window lengths (lower bound searched once per event)
    slot: np.ndarray  # int64[F] ewm slot (-1 if not ewm)
    halflife: np.ndarray  # float64[K] halflife per ewm slot, ms
    param: np.ndarray  # int64[F]: a quantile's percentile; last: 1 reads merchant_id
    retention_ms: int  # max sliding window
    # incremental-state layout of promoted entities
    wlay: np.ndarray  # int64[U, WL_COLS]: xi column of the window start (WL_LO), xf column
    # of the sums (WL_SUM), 1 if x*x sums are kept (WL_SQ), xi column of the max/min front
    # (WL_FMAX/WL_FMIN), of the distinct count (WL_DIST) and of the first of QB quantile
    # bucket counts (WL_QFEN), 1 if per-merchant counts are kept in ``cmap`` (WL_SAME); -1
    # where absent
    glay: np.ndarray  # int64[GL_SIZE]: ring column of the max/min stack links, window index
    # of the longest distinct window, ring column of the previous-occurrence links (distinct)
    # and of the run lengths (std), -1 where absent; sizes of xi/xf/ring rows


class Config(NamedTuple):
    """Per-state settings the kernels read besides the specs."""

    lateness_ms: int
    min_seg: int  # smallest block capacity (rows)
    tuning: Tuning
    # an event more than this after its entity's newest starts the entity afresh, as if
    # never seen (``features/state.py``, "Idle entities"); -1: never
    idle_ms: int = -1


class Events(NamedTuple):
    """One batch in arrival order (columns of equal length)."""

    ent: np.ndarray  # int64[n] dense entity index
    t: np.ndarray  # int64[n] event time, ms
    amt: np.ndarray  # float64[n]
    mer: np.ndarray  # int64[n]


class KernelState(NamedTuple):
    """Everything one WindowState's kernels read and write (layout above).

    Built by :func:`features.kernels.arena.new_state`; arrays that grow are replaced with
    ``_replace`` (entities) or resized in place (arena).
    """

    table: Any  # typed.Dict[int64, int64]: raw id -> dense index
    keys: np.ndarray  # int64[E]: dense index -> raw id
    seg: np.ndarray  # int64[E, SEG_COLS]
    ewm: np.ndarray  # float64[E, 2K]
    arena_t: np.ndarray  # int64[A]
    arena_a: np.ndarray  # float64[A]
    arena_m: np.ndarray  # int64[A]
    meta: np.ndarray  # int64[META_SIZE] (used, garbage, requested capacity, side bytes)
    dmap: Any  # typed.Dict[(int64, int64), int64]: (entity, merchant) -> last live row
    cmap: Any  # typed.Dict[(int64, int64), int64]: (entity * U + window, merchant) -> rows
    xi: Any  # typed.List of int64[:], side storage of promoted entities (per slot)
    xf: Any  # typed.List of float64[:]
    xr: Any  # typed.List of int32[:, :]
    xfree: Any  # typed.List of int64: free slots


_STATE_TYPES: dict[tuple[object, ...], types.Type] = {}


@typeof_impl.register(KernelState)
def _typeof_kernel_state(val: KernelState, c: object) -> types.Type:
    """Numba's type of a :class:`KernelState`, memoised on everything that decides it.

    Numba's dispatcher types a tuple that holds typed containers in Python, field by field:
    ~100-200 us per call for this state, against ~6 us for the same fields passed one by one
    (its C fast path only fingerprints tuples of arrays and scalars). Every batch the worker
    hands to ``process_events`` and every compaction paid it. The memo key holds every input
    of Numba's own typing of a field (array class, dtype, ndim and flags; a container's own
    Numba type, by identity: Numba interns its types and the memoised type holds them, so an
    id is never reused while its entry lives; hashing the types themselves cost more than
    the rest), so the type returned is the one Numba computes
    (tests/features/test_kernel_typing.py checks both).
    """
    key = tuple(
        (type(v), v.dtype, v.ndim, v.flags.num) if isinstance(v, np.ndarray) else id(v._numba_type_)
        for v in val
    )
    ty = _STATE_TYPES.get(key)
    if ty is None:
        ty = types.BaseTuple.from_types([typeof_impl(v, c) for v in val], KernelState)
        _STATE_TYPES[key] = ty
    return ty


# ---------------------------------------------------------------------------- spec lowering


def encode_specs(specs: Sequence[FeatureSpec]) -> EncodedSpecs:
    """Validate and lower a spec list; the only place spec semantics meet kernel codes."""
    specs = kernel_specs(validate_specs(specs))
    agg = np.array([AGG_CODES[s.agg] for s in specs], dtype=np.int64)
    param = np.array(
        [
            s.percentile if s.agg == "quantile" else int(s.agg == "last" and s.column != "amount")
            for s in specs
        ],
        dtype=np.int64,
    )
    windowed = [s for s in specs if s.agg in WINDOWED_AGGS]
    windows = sorted({s.window_ms for s in windowed})
    win_id = np.array(
        [windows.index(s.window_ms) if s.agg in WINDOWED_AGGS else -1 for s in specs],
        dtype=np.int64,
    )
    ewm_specs = [s for s in specs if s.agg == "ewm_mean"]
    slot = np.array(
        [ewm_specs.index(s) if s.agg == "ewm_mean" else -1 for s in specs], dtype=np.int64
    )
    halflife = np.array([float(s.window_ms) for s in ewm_specs], dtype=np.float64)

    wlay = np.full((len(windows), WL_COLS), -1, dtype=np.int64)
    wlay[:, WL_SQ] = 0
    wlay[:, WL_SAME] = 0
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
        if "quantile" in aggs:
            wlay[u, WL_QFEN] = n_xi
            n_xi += QB
        wlay[u, WL_SAME] = int("count_same" in aggs)
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
        win_id=win_id,
        uwin=np.array(windows, dtype=np.int64),
        slot=slot,
        halflife=halflife,
        param=param,
        retention_ms=max_window_ms(specs),
        wlay=wlay,
        glay=glay,
    )
