"""Numba kernels for per-entity sliding-window features (numbagg style).

The stream worker and the batch backfill feed events through the same kernels in the same
order, so they produce bit-identical features. :class:`features.state.WindowState` is the
one caller: it owns a :class:`KernelState`, validates inputs and grows memory, and the
kernels stay plain loops. Read the modules in this order:

* :mod:`~features.kernels.driver`: :func:`process_events` and the **semantics** (the
  contract: arrival order, per-entity lateness, windows ``(t - w, t]``, since_last, ewm).
* :mod:`~features.kernels.layout`: codes derived from ``features.spec``, the **state
  layout** (per-entity rows, arena blocks, side storage), :class:`Tuning` and the argument
  tuples.
* :mod:`~features.kernels.scan`: the scan path (small entities).
* :mod:`~features.kernels.incremental`: the incremental path (promoted entities: running
  sums, monotonic stacks, distinct links), promote/demote/rebuild.
* :mod:`~features.kernels.late`: out-of-order rows of promoted entities.
* :mod:`~features.kernels.ddarith`: the double-double arithmetic of the running sums.
* :mod:`~features.kernels.arena`: allocation, id mapping, compaction, the drop of idle
  entities, snapshot gather, restore.

Every kernel is ``@njit(cache=True)``. Numba's disk cache is keyed on the file that defines
a function only: after editing a module whose kernels are inlined elsewhere (``ddarith``,
``scan``, ``incremental``), clear the cache (``find features -name '*.nb[ci]' -delete``).
"""

from features.kernels.arena import (
    assign_dense_ids,
    compact_arena,
    drop_entities,
    fill_id_table,
    gather_live,
    gather_sums,
    new_state,
    restore_promoted,
    with_entities,
)
from features.kernels.driver import process_events
from features.kernels.incremental import ring_trim
from features.kernels.layout import (
    AGG_CODES,
    BASE,
    CAP,
    DEFAULT_TUNING,
    EVICTED,
    GL_NXF,
    HEAD,
    LEN,
    MAX_BLOCK,
    META_GARBAGE,
    META_REQUEST,
    META_USED,
    META_XBYTES,
    NO_TIME,
    SEG_COLS,
    TMAX,
    XSLOT,
    Config,
    EncodedSpecs,
    Events,
    KernelState,
    Tuning,
    encode_specs,
)

__all__ = [
    "AGG_CODES",
    "BASE",
    "CAP",
    "DEFAULT_TUNING",
    "EVICTED",
    "GL_NXF",
    "HEAD",
    "LEN",
    "MAX_BLOCK",
    "META_GARBAGE",
    "META_REQUEST",
    "META_USED",
    "META_XBYTES",
    "NO_TIME",
    "SEG_COLS",
    "TMAX",
    "XSLOT",
    "Config",
    "EncodedSpecs",
    "Events",
    "KernelState",
    "Tuning",
    "assign_dense_ids",
    "compact_arena",
    "drop_entities",
    "encode_specs",
    "fill_id_table",
    "gather_live",
    "gather_sums",
    "new_state",
    "process_events",
    "restore_promoted",
    "ring_trim",
    "with_entities",
]
