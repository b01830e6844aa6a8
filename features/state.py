"""Per-partition window state with a river-style ``update`` API.

One :class:`WindowState` per Kafka partition (or per backfill shard). It owns the dense-id
table, the per-entity arrays and the history arena used by :mod:`features.kernels` (one
:class:`~features.kernels.KernelState`), grows them as needed, and snapshots only live data
(plus the running sums of entities on the kernels' incremental path; the rest of that state
is rebuilt from the rows on restore). Validation lives here so the kernels can stay plain
loops."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pyarrow as pa
from numba import int64 as nb_int64
from numba.typed import Dict as NumbaDict

from features import kernels as K
from features.derived import derived_plan, fill_derived
from features.kernels import dedupe as D
from features.spec import (
    DEFAULT_FEATURES,
    DEFAULT_LATENESS_MS,
    DERIVED_AGGS,
    NO_EXPIRY,
    Expiry,
    FeatureSpec,
    feature_names,
    spec_fingerprint,
    validate_specs,
)

# 2: + promoted entities' running sums; 3: + recent ids; 4: + expiry; 5: + checkpoints of
# changes (``removed``, header ``changes``)
SNAPSHOT_VERSION = 5
_READABLE_VERSIONS = (2, 3, 4, 5)  # 2: no recent ids; 2 and 3: the caller's expiry, no clock
# Times are bounded so that t - lateness - window can never overflow int64 in the kernel.
_MAX_ABS_TIME_MS = 1 << 60
# Bytes per entry of the numba typed dict, measured (76 MB RSS for 1M int64 -> int64).
_ID_TABLE_BYTES_PER_ENTRY = 80
# Same kind of estimates (measured: 54 B per (entity, merchant) entry for 1M entries; 720 B
# per side-storage slot beyond its array data, i.e. three small numba-owned arrays).
_DIST_MAP_BYTES_PER_ENTRY = 64
_SIDE_BYTES_PER_SLOT = 720
# Recent event ids are swept (``dedupe.evict``) when they reach this many, or twice what
# the last sweep kept: amortised O(1) per event.
_EVICT_MIN = 1 << 16
# Idle entities are dropped in place (O(dropped), plus one sweep of the recent ids and, when
# a promoted entity moves, one pass over the distinct maps) once at least this many may go
# and they hold a sixteenth of its bytes: memory stays within 16/15 of the live entities'
# (their freed rows are reused before the arena grows). A drop was a rebuild of the whole
# state, 0.45 s for 133 MiB, and waited for a quarter.
_PURGE_MIN = 1 << 12
_PURGE_SHARE = 16
# Compaction gives an arena of more than 4x its used rows back, down to 2x (not below this).
_ARENA_FLOOR = 1024
_ENTITY_BYTES = _ID_TABLE_BYTES_PER_ENTRY + 8 * (K.SEG_COLS + 1)  # id table, seg row, key
_ROW_BYTES = 24  # a history row: time, amount, merchant


def event_keys(entity_ids: np.ndarray, event_ids: pa.Array) -> np.ndarray:
    """The duplicate-detection key of each (entity, event id) (``features.kernels.dedupe``),
    from the ids' Arrow buffers (no Python string per event)."""
    ids = event_ids
    width = np.int64 if pa.types.is_large_string(ids.type) else np.int32
    _, offsets, data = ids.buffers()
    # only the offsets become int64 (one kernel signature); the bytes are read in place
    offs = np.frombuffer(offsets, dtype=width)[ids.offset : ids.offset + len(ids) + 1]
    offs = offs.astype(np.int64)
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    out = np.empty(len(ids), dtype=np.int64)
    D.id_keys(np.ascontiguousarray(entity_ids, dtype=np.int64), offs, raw, out)
    return out


@dataclass(frozen=True)
class BatchResult:
    """Output of :meth:`WindowState.update`, row-aligned with the input batch."""

    features: np.ndarray  # float64 [n, F]; NaN rows for late events
    late: np.ndarray  # bool [n]; caller dead-letters these
    latest_mask: np.ndarray  # bool [n]; rows to write to the online store
    entity_max_time_ms: np.ndarray  # int64 [n]; the row's entity max event time after the batch
    failed: tuple[tuple[int, str], ...] = ()  # (row, why): events the state could not hold
    # bool [n]: a copy of an event the entity holds (``features.kernels.dedupe``); no row
    duplicate: np.ndarray | None = None
    # bool [n]: late for being more than ``Expiry.max_delay_ms`` behind the partition's
    # clock (also set in ``late``); None when the rule is off
    behind_clock: np.ndarray | None = None


def _trimmed_caps(lengths: np.ndarray, min_seg: int) -> np.ndarray:
    """Block capacity after compaction/restore: ~12% slack, so a trimmed block takes a few
    inserts before relocating (1.5x) again; empty entities give their block back entirely.

    Slack trades memory for compaction frequency: at 1M users x 20 events, 25% slack cost
    ~70 MiB more for ~5% higher update throughput while all users grow (measured by hand).
    """
    return np.where(lengths > 0, np.maximum(lengths + (lengths >> 3) + 1, min_seg), 0).astype(
        np.int64
    )


def _spread(part: BatchResult, kept: np.ndarray, n: int, newest: np.ndarray) -> BatchResult:
    """``part`` (the result of the rows ``kept`` of a batch of ``n``) as the whole batch's:
    the other rows get NaN features and no verdict; ``newest`` is every row's entity max."""
    features = np.full((n, part.features.shape[1]), np.nan)
    features[kept] = part.features
    late = np.zeros(n, dtype=np.bool_)
    late[kept] = part.late
    latest = np.zeros(n, dtype=np.bool_)
    latest[kept] = part.latest_mask
    duplicate = None
    if part.duplicate is not None:
        duplicate = np.zeros(n, dtype=np.bool_)
        duplicate[kept] = part.duplicate
    return BatchResult(
        features=features,
        late=late,
        latest_mask=latest,
        entity_max_time_ms=newest,
        failed=tuple((int(kept[row]), why) for row, why in part.failed),
        duplicate=duplicate,
    )


def _load(data: bytes) -> tuple[Mapping[str, np.ndarray], dict]:
    """A snapshot's arrays and header; ValueError for bytes that are not one."""
    try:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        return z, json.loads(str(z["header"]))
    except Exception as exc:  # corrupt/foreign bytes: fail with context
        raise ValueError(f"not a WindowState snapshot: {exc}") from exc


def _merge(base: Mapping[str, np.ndarray], changes: Mapping[str, np.ndarray]) -> dict:
    """The snapshot arrays of ``base`` with a checkpoint of ``changes`` applied: its
    entities replace (or join) the base's, its removed keys leave."""
    gone = np.concatenate([changes["keys"], changes["removed"]])
    keep = ~np.isin(base["keys"], gone)
    rows = np.repeat(keep, base["lengths"])
    promoted_kept = keep[base["promoted"]]
    renumber = np.cumsum(keep) - 1
    seen_kept = ~np.isin(base["seen_entities"], gone) if "seen_keys" in base else None
    out = {
        name: np.concatenate([base[name][keep], changes[name]])
        for name in ("keys", "tmax", "evicted", "lengths", "ewm")
    }
    for name in ("hist_t", "hist_a", "hist_m"):
        out[name] = np.concatenate([base[name][rows], changes[name]])
    out["promoted"] = np.concatenate(
        [renumber[base["promoted"][promoted_kept]], changes["promoted"] + int(keep.sum())]
    ).astype(np.int64)
    out["sums"] = np.concatenate([base["sums"][promoted_kept], changes["sums"]])
    for name in ("seen_keys", "seen_times", "seen_entities"):
        held = base[name][seen_kept] if seen_kept is not None else np.empty(0, np.int64)
        out[name] = np.concatenate([held, changes[name]])
    return out


def _as_1d(name: str, arr: object, dtype: type[np.generic]) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype != dtype:
        if a.size and not np.can_cast(a.dtype, dtype, casting="safe"):
            raise TypeError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
        a = a.astype(dtype)
    return np.ascontiguousarray(a)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A copy of a :class:`WindowState`'s live state, detached from it (thread-safe)."""

    header: np.ndarray
    keys: np.ndarray
    tmax: np.ndarray
    evicted: np.ndarray
    lengths: np.ndarray
    ewm: np.ndarray
    hist_t: np.ndarray
    hist_a: np.ndarray
    hist_m: np.ndarray
    promoted: np.ndarray
    sums: np.ndarray
    seen_keys: np.ndarray  # recent event-id keys (``features.kernels.dedupe``) ...
    seen_times: np.ndarray  # ... their event times ...
    seen_entities: np.ndarray  # ... and their entities (raw ids)
    # keys of the entities dropped since the last checkpoint (a checkpoint of changes only)
    removed: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def encode(self) -> bytes:
        """The bytes :meth:`WindowState.restore` reads (an uncompressed ``.npz``)."""
        buf = io.BytesIO()
        np.savez(buf, **{f.name: getattr(self, f.name) for f in fields(self)})
        return buf.getvalue()


class WindowState:
    """Sliding-window feature state for the entities of one partition.

    Results depend only on the event sequence (not on batch sizes, arena sizes or
    snapshot/restore points), which is what lets stream and backfill agree exactly.

    **Idle entities** (``expiry``, :class:`~features.spec.Expiry`). The partition's clock is
    the newest event time it has seen. An event more than ``max_delay_ms`` behind the clock
    is late; an event more than ``idle_ms`` after its entity's newest finds the entity
    afresh (the kernels). So an entity whose newest time is more than ``idle_ms +
    max_delay_ms`` behind the clock can be dropped without changing any row: its next
    event is either behind the clock by more than ``max_delay_ms`` (late, state or not) or
    more than ``idle_ms`` after its newest (afresh, state or not). Which entities are dropped
    when is memory management only. The clock is the partition's (each state of the stream
    is one partition's); a backfill passes each event's partition clock to :meth:`update`
    and drops nothing.
    """

    def __init__(
        self,
        specs: Sequence[FeatureSpec] = DEFAULT_FEATURES,
        *,
        lateness_ms: int = DEFAULT_LATENESS_MS,
        initial_entities: int = 1024,
        initial_arena: int = 1 << 16,
        min_segment: int = 4,
        tuning: K.Tuning = K.DEFAULT_TUNING,
        expiry: Expiry = NO_EXPIRY,
    ) -> None:
        """``tuning`` moves work between the kernels' paths (performance only; tests force
        each path with it); the default is the production constant stream and backfill share.
        """
        if isinstance(lateness_ms, bool) or not isinstance(lateness_ms, int) or lateness_ms < 0:
            raise ValueError(f"lateness_ms must be a non-negative int, got {lateness_ms!r}")
        if initial_entities < 1 or initial_arena < 1 or min_segment < 1:
            raise ValueError("initial_entities, initial_arena and min_segment must be >= 1")
        if not isinstance(tuning, K.Tuning) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in tuning
        ):
            raise ValueError(f"tuning must be a features.kernels.Tuning of ints >= 0: {tuning!r}")
        self._specs = validate_specs(specs)
        self._enc = K.encode_specs(self._specs)
        # the kernels fill their own columns of the feature matrix; derived ones follow
        self._kernel_cols = np.array(
            [j for j, s in enumerate(self._specs) if s.agg not in DERIVED_AGGS], dtype=np.int64
        )
        self._derived = derived_plan(self._specs)
        if not isinstance(expiry, Expiry):
            raise ValueError(f"expiry must be a features.spec.Expiry, got {expiry!r}")
        reach = self._enc.retention_ms + lateness_ms
        if expiry.idle_ms is not None and expiry.idle_ms < reach:
            raise ValueError(
                f"idle_ms={expiry.idle_ms} must be at least the longest window plus the "
                f"lateness ({reach} ms): an entity starting afresh must have no row in any window"
            )
        self._expiry = expiry
        self._clock = K.NO_TIME  # the newest event time seen (the partition's clock)
        self._purge_checked = K.NO_TIME  # the clock when idle entities were last looked for
        self.purged = 0  # idle entities dropped by this object
        self._lateness_ms = lateness_ms
        self._min_seg = int(min_segment)
        self._tuning = tuning
        self._cfg = K.Config(
            lateness_ms=lateness_ms,
            min_seg=self._min_seg,
            tuning=tuning,
            idle_ms=-1 if expiry.idle_ms is None else expiry.idle_ms,
        )
        self._n = 0
        self._st = K.new_state(initial_entities, initial_arena, len(self._enc.halflife))
        # recent event ids per entity (duplicates): key -> time, key -> entity
        self._seen_t = NumbaDict.empty(nb_int64, nb_int64)
        self._seen_e = NumbaDict.empty(nb_int64, nb_int64)
        self._evict_at = _EVICT_MIN
        # what changed since the last checkpoint (:meth:`checkpoint`): entities updated (by
        # dense index) and the keys of those dropped
        self._dirty = np.zeros(initial_entities, dtype=np.bool_)
        self._removed: list[np.ndarray] = []

    # ------------------------------------------------------------------ properties

    @property
    def specs(self) -> tuple[FeatureSpec, ...]:
        """The features this state computes, in column order."""
        return self._specs

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Column names of the feature rows."""
        return feature_names(self._specs)

    @property
    def lateness_ms(self) -> int:
        """Allowed lateness per entity."""
        return self._lateness_ms

    @property
    def expiry(self) -> Expiry:
        """When idle entities start afresh and are dropped."""
        return self._expiry

    @property
    def clock(self) -> int:
        """The newest event time seen (``NO_TIME`` before any)."""
        return int(self._clock)

    @property
    def n_entities(self) -> int:
        """Entities held (seen, less those dropped idle)."""
        return self._n

    @property
    def nbytes(self) -> int:
        """Approximate state memory: arrays (incl. arena slack), side storage of promoted
        entities, hash-table estimates."""
        st = self._st
        arrays = (st.keys, st.seg, st.ewm, st.arena_t, st.arena_a, st.arena_m)
        return (
            sum(a.nbytes for a in arrays)
            + self._n * _ID_TABLE_BYTES_PER_ENTRY
            + int(st.meta[K.META_XBYTES])
            + len(st.xi) * _SIDE_BYTES_PER_SLOT
            + (len(st.dmap) + len(st.cmap)) * _DIST_MAP_BYTES_PER_ENTRY
            + len(self._seen_t) * 2 * _ID_TABLE_BYTES_PER_ENTRY
        )

    def holds(self, user_id: int) -> bool:
        """Whether the state has seen this user (it holds the user's history)."""
        return int(user_id) in self._st.table

    @property
    def n_promoted(self) -> int:
        """Entities currently on the kernels' incremental path (long histories)."""
        return int((self._st.seg[: self._n, K.XSLOT] >= 0).sum())

    @property
    def n_live_rows(self) -> int:
        """Retained history rows over all entities."""
        return int(self._st.seg[: self._n, K.LEN].sum())

    # ------------------------------------------------------------------ update

    def update(
        self,
        user_ids: np.ndarray,
        times_ms: np.ndarray,
        amounts: np.ndarray,
        merchants: np.ndarray,
        event_keys: np.ndarray | None = None,
        *,
        clocks: np.ndarray | None = None,
    ) -> BatchResult:
        """Apply a batch in arrival order and return one feature row per event.

        With ``event_keys`` (:func:`event_keys` of the events' ids), an event whose id its
        entity already holds is a duplicate (``features.kernels.dedupe``): marked in
        ``duplicate``, with a NaN row, no state change and no ``latest_mask``.

        ``latest_mask`` marks, per user, the accepted row that is the last-arrived row with
        the user's max event time as of the end of the batch, so an online store written
        only with those rows is never overwritten by an older event. Rows with a time equal
        to a previous batch's max are newer in arrival order and are marked too.

        ``clocks``: each event's partition clock (the newest time of its partition up to
        and including it), where this state is not one partition's (a backfill shard); the
        state then drops no idle entity. Without, the state is its partition and keeps the
        clock itself (see the class docstring).
        """
        users = _as_1d("user_ids", user_ids, np.int64)
        times = _as_1d("times_ms", times_ms, np.int64)
        amts = _as_1d("amounts", amounts, np.float64)
        mers = _as_1d("merchants", merchants, np.int64)
        n = users.shape[0]
        if not (times.shape[0] == amts.shape[0] == mers.shape[0] == n):
            raise ValueError(
                "user_ids, times_ms, amounts, merchants must have equal lengths, got "
                f"{n}, {times.shape[0]}, {amts.shape[0]}, {mers.shape[0]}"
            )
        if n and (times.min() <= -_MAX_ABS_TIME_MS or times.max() >= _MAX_ABS_TIME_MS):
            raise ValueError("times_ms out of range (|t| must be < 2**60 ms)")
        if n and not np.isfinite(amts).all():
            raise ValueError("amounts must be finite (NaN/inf would poison window sums)")
        keys = None if event_keys is None else _as_1d("event_keys", event_keys, np.int64)
        if keys is not None and keys.shape[0] != n:
            raise ValueError(f"event_keys must have {n} entries, got {keys.shape[0]}")
        own_clock = clocks is None
        if not own_clock:
            clocks = _as_1d("clocks", clocks, np.int64)
            if clocks.shape[0] != n or (n and (clocks < times).any()):
                raise ValueError("clocks must have one entry per event, each >= its time")
        elif self._expiry.max_delay_ms is not None and n:
            clocks = np.maximum.accumulate(np.maximum(times, self._clock))
        if clocks is None or self._expiry.max_delay_ms is None:
            result = self._update(users, times, amts, mers, keys)
        else:
            behind = times < clocks - self._expiry.max_delay_ms
            if not behind.any():
                result = replace(self._update(users, times, amts, mers, keys), behind_clock=behind)
            else:
                result = self._without_behind(users, times, amts, mers, keys, behind)
        if clocks is not None and n:
            self._clock = max(int(self._clock), int(clocks.max()))
            if own_clock and self._expiry.purges:
                self._purge_idle()
        return result

    def _without_behind(
        self,
        users: np.ndarray,
        times: np.ndarray,
        amts: np.ndarray,
        mers: np.ndarray,
        keys: np.ndarray | None,
        behind: np.ndarray,
    ) -> BatchResult:
        """:meth:`_update` of the events not ``behind`` the clock; those are late rows."""
        n = users.shape[0]
        kept = np.flatnonzero(~behind)
        part = self._update(
            users[kept], times[kept], amts[kept], mers[kept], None if keys is None else keys[kept]
        )
        newest = np.full(n, K.NO_TIME, dtype=np.int64)  # changes no entity's max
        newest[kept] = part.entity_max_time_ms
        result = _spread(part, kept, n, newest)
        result.late[behind] = True
        return replace(result, behind_clock=behind)

    def _update(
        self,
        users: np.ndarray,
        times: np.ndarray,
        amts: np.ndarray,
        mers: np.ndarray,
        keys: np.ndarray | None,
    ) -> BatchResult:
        """:meth:`update` of validated columns, the clock rule applied."""
        n = users.shape[0]
        self._ensure_entities(self._n + n)
        ent = np.empty(n, dtype=np.int64)
        self._n = K.assign_dense_ids(self._st.table, users, self._st.keys, self._n, ent)
        if self._dirty.shape[0] < self._n:
            self._dirty = np.concatenate(
                [self._dirty, np.zeros(self._st.seg.shape[0] - self._dirty.shape[0], np.bool_)]
            )
        self._dirty[ent] = True
        if keys is None:
            return self._apply(ent, times, amts, mers)
        duplicate = np.zeros(n, dtype=np.bool_)
        D.mark_duplicates(
            ent, users, keys, times, self._st.seg, self._lateness_ms, self._cfg.idle_ms,
            self._seen_t, self._seen_e, duplicate,
        )  # fmt: skip
        if not duplicate.any():
            result = self._apply(ent, times, amts, mers)
        else:
            kept = np.flatnonzero(~duplicate)
            part = self._apply(ent[kept], times[kept], amts[kept], mers[kept])
            result = _spread(part, kept, n, self._st.seg[ent, K.TMAX])
        if len(self._seen_t) >= self._evict_at:
            self.sweep_ids()
        return replace(result, duplicate=duplicate)

    def _purge_idle(self) -> None:
        """Drop the entities idle for longer than ``idle_ms + max_delay_ms`` behind the clock
        (no row changes: the class docstring), once enough may go (``_PURGE_SHARE``)."""
        assert self._expiry.idle_ms is not None and self._expiry.max_delay_ms is not None
        horizon = self._expiry.idle_ms + self._expiry.max_delay_ms
        clock = int(self._clock)
        if self._purge_checked != K.NO_TIME and clock - self._purge_checked < horizon >> 6:
            return  # looked at most 1/64 of the horizon ago: an O(entities) look, rarely
        self._purge_checked = clock
        limit = clock - horizon
        seg = self._st.seg[: self._n]
        tmax = seg[:, K.TMAX]
        idle = (tmax != K.NO_TIME) & (tmax < limit)
        count = int(idle.sum())
        # what dropping them frees (id-table entries, entity rows, history blocks) against
        # what all hold (the arena's slack and garbage are compaction's business)
        freed = count * _ENTITY_BYTES + int(seg[idle, K.CAP].sum()) * _ROW_BYTES
        held = self._n * _ENTITY_BYTES + int(seg[:, K.CAP].sum()) * _ROW_BYTES
        if count >= _PURGE_MIN and freed * _PURGE_SHARE >= held:
            self._drop(idle)
            self.purged += count

    def _drop(self, gone: np.ndarray) -> None:
        """Drop the entities ``gone`` (bool over the dense indexes) in place
        (:func:`features.kernels.arena.drop_entities`: O(dropped), their rows left as arena
        garbage for the next compaction), and the recent event ids of them."""
        count = int(gone.sum())
        self._removed.append(self._st.keys[: self._n][gone].copy())
        moved_from = np.empty(count, dtype=np.int64)
        moved_to = np.empty(count, dtype=np.int64)
        moves = K.drop_entities(self._st, self._enc, gone, self._n, moved_from, moved_to)
        dirty = self._dirty
        dirty[moved_to[:moves]] = dirty[moved_from[:moves]]
        self._n -= count
        dirty[self._n :] = False
        self.sweep_ids()  # the dropped entities' ids: none of them can match any more

    @property
    def n_recent_ids(self) -> int:
        """Event ids held for duplicate detection (swept ones excluded)."""
        return len(self._seen_t)

    def sweep_ids(self) -> None:
        """Forget the event ids no copy can match any more (memory only: no verdict
        changes); :meth:`update` calls it as they accumulate."""
        D.evict(self._seen_t, self._seen_e, self._st.table, self._st.seg, self._lateness_ms)
        self._evict_at = max(2 * len(self._seen_t), _EVICT_MIN)

    def _apply(
        self, ent: np.ndarray, times: np.ndarray, amts: np.ndarray, mers: np.ndarray
    ) -> BatchResult:
        """Run the kernels over these events (dense entity indexes) in order."""
        n = ent.shape[0]
        events = K.Events(ent=ent, t=times, amt=amts, mer=mers)
        out = np.empty((n, len(self._kernel_cols)), dtype=np.float64)
        late = np.zeros(n, dtype=np.bool_)
        i = 0
        failed: list[tuple[int, str]] = []
        while True:
            i = K.process_events(events, i, self._enc, self._cfg, self._st, out, late)
            if i >= n:
                break
            try:
                self._make_room(int(self._st.meta[K.META_REQUEST]))
            except (OverflowError, MemoryError) as exc:  # the kernel stopped before event i
                failed.append((i, f"{type(exc).__name__}: {exc}"))
                out[i] = np.nan
                late[i] = False
                i += 1

        tmax_after = self._st.seg[ent, K.TMAX]
        refused = late.copy()
        for row, _ in failed:
            refused[row] = True
        accepted_at_max = np.flatnonzero(~refused & (times == tmax_after))
        latest = np.zeros(n, dtype=np.bool_)
        if accepted_at_max.size:
            rev = accepted_at_max[::-1]
            _, first_in_rev = np.unique(ent[rev], return_index=True)
            latest[rev[first_in_rev]] = True
        if self._derived:
            full = np.empty((n, len(self._specs)), dtype=np.float64)
            full[:, self._kernel_cols] = out
            fill_derived(full, self._derived)
            out = full
        return BatchResult(
            features=out,
            late=late,
            latest_mask=latest,
            entity_max_time_ms=tmax_after,
            failed=tuple(failed),
        )

    def peek(
        self,
        user_ids: np.ndarray,
        times_ms: np.ndarray,
        amounts: np.ndarray,
        merchants: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(features, late) of each event as if it arrived next, alone; the state is unchanged.

        Request-time scoring: a transaction is scored with the features the stream would
        compute for it were it its user's next event (windows slid to its time, rows that
        expired by then gone), and nothing is written. Each event sees the state only,
        never the other events of the call. Exact by construction: the users' live state
        (rows, max and evicted times, ewm, running sums) goes through the snapshot path into
        a scratch state and the event is applied there by the same kernels, so each row is
        the one :meth:`update` would return, bit for bit. Costs O(rows the user holds).
        """
        users = _as_1d("user_ids", user_ids, np.int64)
        times = _as_1d("times_ms", times_ms, np.int64)
        amts = _as_1d("amounts", amounts, np.float64)
        mers = _as_1d("merchants", merchants, np.int64)
        n = users.shape[0]
        features = np.full((n, len(self._specs)), np.nan)
        late = np.zeros(n, dtype=bool)
        # rounds of distinct users: an event's k-th repeat of its user goes in round k
        order = np.argsort(users, kind="stable")
        first = np.r_[True, users[order][1:] != users[order][:-1]] if n else np.zeros(0, bool)
        starts = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        rounds = np.empty(n, dtype=np.int64)
        rounds[order] = np.arange(n) - starts
        header = {
            "lateness_ms": self._lateness_ms,
            "min_segment": self._min_seg,
            "idle_ms": self._expiry.idle_ms,
            "max_delay_ms": self._expiry.max_delay_ms,
            "clock": int(self._clock),
        }
        table = self._st.table
        for r in range(int(rounds.max()) + 1 if n else 0):
            idx = np.flatnonzero(rounds == r)
            dense = np.array([table.get(int(u), -1) for u in users[idx]], dtype=np.int64)
            snap = self._capture_entities(dense[dense >= 0])
            parts = {f.name: getattr(snap, f.name) for f in fields(snap)}
            scratch = WindowState._rebuild(header, parts, self._specs, self._tuning)
            res = scratch.update(users[idx], times[idx], amts[idx], mers[idx])
            features[idx] = res.features
            late[idx] = res.late
            for row, _ in res.failed:
                late[idx[row]] = True
        return features, late

    # ------------------------------------------------------------------ memory management

    def _ensure_entities(self, needed: int) -> None:
        cap = self._st.seg.shape[0]
        if needed > cap:
            self._st = K.with_entities(self._st, max(needed, cap * 2))

    def compact(self) -> None:
        """Drop dead arena space in place and trim block slack to ~12% (never grows a block);
        give back what a past burst left: rings and an arena 4x what the live rows need."""
        st = self._st
        seg = st.seg[: self._n]
        length = seg[:, K.LEN]
        cap = seg[:, K.CAP]
        new_cap = np.minimum(cap, _trimmed_caps(length, self._min_seg))
        order = np.flatnonzero(cap > 0)
        order = order[np.argsort(seg[order, K.BASE])].astype(np.int64)  # bases are unique
        used = K.compact_arena(st, order, new_cap.astype(np.int64))
        st.meta[K.META_USED] = used
        st.meta[K.META_GARBAGE] = 0
        K.ring_trim(st.seg, self._n, st.xi, st.xr, st.meta)
        if st.arena_t.shape[0] > max(4 * used, _ARENA_FLOOR):
            # a burst's arena given back (ring_trim's reason, for the history rows)
            for a in (st.arena_t, st.arena_a, st.arena_m):
                a.resize(max(2 * used, _ARENA_FLOOR), refcheck=False)

    def _make_room(self, request: int) -> None:
        """Called when a block of ``request`` rows did not fit: compact, then grow if tight."""
        if request > K.MAX_BLOCK:
            raise OverflowError(f"one entity would need more than {K.MAX_BLOCK} history rows")
        self.compact()
        st = self._st
        used = int(st.meta[K.META_USED])
        size = st.arena_t.shape[0]
        if size - used < max(request, used >> 2):
            new_size = used + max(request, used >> 1, 1024)
            # in-place realloc: no views of the arena are held anywhere
            for a in (st.arena_t, st.arena_a, st.arena_m):
                a.resize(new_size, refcheck=False)

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> bytes:
        """Serialize live state only (no arena slack); restorable with the same specs."""
        return self.capture().encode()

    def capture(self) -> Snapshot:
        """Private copies of the live state, to :meth:`Snapshot.encode` later or elsewhere.

        Split from encoding so the stream worker copies between fetches (memory speed) and
        serializes in a thread: encoding is most of a snapshot's time (2.2 s for 1M users,
        ``benchmarks/state_memory.py``), a stall of the fetch loop if done there.
        """
        n = self._n
        st = self._st
        seg = st.seg[:n]
        lengths = seg[:, K.LEN].copy()
        total = int(lengths.sum())
        hist_t = np.empty(total, dtype=np.int64)
        hist_a = np.empty(total, dtype=np.float64)
        hist_m = np.empty(total, dtype=np.int64)
        K.gather_live(st, n, hist_t, hist_a, hist_m)
        promoted = np.flatnonzero(seg[:, K.XSLOT] >= 0).astype(np.int64)
        sums = np.empty((promoted.shape[0], int(self._enc.glay[K.GL_NXF])), dtype=np.float64)
        K.gather_sums(st, promoted, sums)
        m = len(self._seen_t)
        seen = (np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.int64))
        D.gather(self._seen_t, self._seen_e, *seen)
        return self._snapshot_of(st.keys[:n].copy(), seg, lengths, st.ewm[:n].copy(),
                                 hist_t, hist_a, hist_m, promoted, sums, seen)  # fmt: skip

    def checkpoint(self, *, changes: bool) -> Snapshot:
        """:meth:`capture` for a checkpoint: the whole state, or (``changes``) only what
        changed since the last checkpoint: the entities updated (whole) and the keys of those
        dropped. Either way the next checkpoint of changes counts from here.

        A checkpoint of changes costs what changed, not what is held: a worker holding 1M
        users copied them all in its loop at each checkpoint (``benchmarks/state_memory.py``).
        :meth:`restore_chain` applies such checkpoints to the whole one before them.
        """
        if not changes:
            snap = self.capture()
        else:
            dense = np.flatnonzero(self._dirty[: self._n]).astype(np.int64)
            snap = self._capture_entities(dense)
            m = len(self._seen_t)
            seen = (np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.int64))
            D.gather(self._seen_t, self._seen_e, *seen)
            mine = np.isin(seen[2], snap.keys)
            header = json.loads(str(snap.header)) | {"changes": True}
            removed = np.concatenate(self._removed) if self._removed else np.empty(0, np.int64)
            snap = replace(
                snap, header=np.array(json.dumps(header)), seen_keys=seen[0][mine],
                seen_times=seen[1][mine], seen_entities=seen[2][mine], removed=removed,
            )  # fmt: skip
        self._dirty[:] = False
        self._removed = []
        return snap

    def _capture_entities(self, dense: np.ndarray) -> Snapshot:
        """A snapshot of only the entities ``dense`` (dense indexes, unique), renumbered
        0..k-1 in that order: what :meth:`peek` restores into a scratch state."""
        st = self._st
        seg = st.seg[dense]
        lengths = seg[:, K.LEN].copy()
        starts = seg[:, K.BASE] + seg[:, K.HEAD]
        # each entity's block rows, by one repeat (a list of aranges cost 18 ms at 19k)
        rows = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(
            int(lengths.sum()), dtype=np.int64
        )
        promoted_at = np.flatnonzero(seg[:, K.XSLOT] >= 0).astype(np.int64)
        sums = np.empty((promoted_at.shape[0], int(self._enc.glay[K.GL_NXF])), dtype=np.float64)
        K.gather_sums(st, dense[promoted_at].astype(np.int64), sums)
        return self._snapshot_of(st.keys[dense], seg, lengths, st.ewm[dense],
                                 st.arena_t[rows], st.arena_a[rows], st.arena_m[rows],
                                 promoted_at, sums)  # fmt: skip

    def _snapshot_of(
        self,
        keys: np.ndarray,
        seg: np.ndarray,
        lengths: np.ndarray,
        ewm: np.ndarray,
        hist_t: np.ndarray,
        hist_a: np.ndarray,
        hist_m: np.ndarray,
        promoted: np.ndarray,
        sums: np.ndarray,
        seen: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> Snapshot:
        """A :class:`Snapshot` of these entity arrays (``seg`` rows give TMAX and EVICTED)."""
        none = np.empty(0, np.int64)
        header = {
            "version": SNAPSHOT_VERSION,
            "specs": spec_fingerprint(self._specs),
            "lateness_ms": self._lateness_ms,
            "min_segment": self._min_seg,
            "idle_ms": self._expiry.idle_ms,
            "max_delay_ms": self._expiry.max_delay_ms,
            "clock": int(self._clock),
        }
        return Snapshot(
            header=np.array(json.dumps(header)),
            keys=keys,
            tmax=seg[:, K.TMAX].copy(),
            evicted=seg[:, K.EVICTED].copy(),
            lengths=lengths,
            ewm=ewm,
            hist_t=hist_t,
            hist_a=hist_a,
            hist_m=hist_m,
            promoted=promoted,  # entities on the incremental path ...
            sums=sums,  # ... and their running sums (rounding depends on history)
            seen_keys=none if seen is None else seen[0],  # recent event ids: keys, times,
            seen_times=none if seen is None else seen[1],  # entities (a peek's scratch
            seen_entities=none if seen is None else seen[2],  # state needs none)
        )

    @classmethod
    def restore(
        cls,
        data: bytes,
        specs: Sequence[FeatureSpec] = DEFAULT_FEATURES,
        *,
        lateness_ms: int | None = None,
        tuning: K.Tuning = K.DEFAULT_TUNING,
        expiry: Expiry | None = None,
    ) -> WindowState:
        """Rebuild a state from :meth:`snapshot`; ``specs`` must equal the snapshot's specs.

        The snapshot's lateness and expiry are kept (rows were kept and dropped by them);
        pass ``lateness_ms`` and ``expiry`` to assert they match the caller's configuration
        instead of silently diverging. A snapshot from before expiry (format 2 or 3) takes
        ``expiry`` from here on.
        """
        return cls.restore_chain(data, (), specs, lateness_ms=lateness_ms, tuning=tuning,
                                 expiry=expiry)  # fmt: skip

    @classmethod
    def restore_chain(
        cls,
        data: bytes,
        changes: Sequence[bytes],
        specs: Sequence[FeatureSpec] = DEFAULT_FEATURES,
        *,
        lateness_ms: int | None = None,
        tuning: K.Tuning = K.DEFAULT_TUNING,
        expiry: Expiry | None = None,
    ) -> WindowState:
        """:meth:`restore` of a whole snapshot followed by checkpoints of changes
        (:meth:`checkpoint`), in the order they were taken."""
        specs = validate_specs(specs)
        z, header = _load(data)
        if header.get("version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"snapshot format version {header.get('version')!r} is not one this build "
                f"reads {_READABLE_VERSIONS}"
            )
        if header.get("changes"):
            raise ValueError("a checkpoint of changes cannot be restored without its base")
        for blob in changes:
            part, part_header = _load(blob)
            if not part_header.get("changes") or part_header["specs"] != header["specs"]:
                raise ValueError("not a checkpoint of changes of this state")
            z, header = _merge(z, part), part_header | {"changes": False}
        if header["specs"] != spec_fingerprint(specs):
            have = [s[0] for s in header["specs"]]
            raise ValueError(
                "snapshot was taken with different feature specs; refusing to restore "
                f"(snapshot: {have}, requested: {list(feature_names(specs))})"
            )
        if lateness_ms is not None and lateness_ms != header["lateness_ms"]:
            raise ValueError(
                f"snapshot lateness_ms={header['lateness_ms']} != requested {lateness_ms}; "
                "changing lateness needs a replay from a fresh state"
            )
        if "idle_ms" in header:
            kept = Expiry(header["idle_ms"], header["max_delay_ms"])
            if expiry is not None and expiry != kept:
                raise ValueError(
                    f"snapshot expiry {kept} != requested {expiry}; changing when idle "
                    "entities are dropped needs a replay from a fresh state"
                )
        else:
            expiry = expiry or NO_EXPIRY
            header |= {"idle_ms": expiry.idle_ms, "max_delay_ms": expiry.max_delay_ms}
        return cls._rebuild(header, z, specs, tuning)

    @classmethod
    def _rebuild(
        cls,
        header: dict[str, object],
        z: Mapping[str, np.ndarray],
        specs: Sequence[FeatureSpec],
        tuning: K.Tuning,
    ) -> WindowState:
        """A state holding exactly the snapshot arrays ``z`` (checked by the caller)."""
        keys = z["keys"]
        n = keys.shape[0]
        lengths = z["lengths"]
        total = int(lengths.sum())
        min_seg = int(header["min_segment"])  # type: ignore[call-overload]
        caps = _trimmed_caps(lengths, min_seg)
        arena_size = max(int(caps.sum()) * 5 // 4, 1024)
        st = cls(
            specs,
            lateness_ms=int(header["lateness_ms"]),  # type: ignore[call-overload]
            initial_entities=max(n, 1),
            initial_arena=arena_size,
            min_segment=min_seg,
            tuning=tuning,
            expiry=Expiry(header.get("idle_ms"), header.get("max_delay_ms")),  # type: ignore[arg-type]
        )
        st._clock = int(header.get("clock", K.NO_TIME))  # type: ignore[call-overload]
        st._n = n
        ks = st._st
        ks.keys[:n] = keys
        K.fill_id_table(ks.table, ks.keys[:n])
        seg = ks.seg
        seg[:n, K.TMAX] = z["tmax"]
        seg[:n, K.EVICTED] = z["evicted"]
        seg[:n, K.LEN] = lengths
        seg[:n, K.CAP] = caps
        seg[:n, K.HEAD] = 0
        bases = np.concatenate(([0], np.cumsum(caps)[:-1])) if n else np.zeros(0, np.int64)
        seg[:n, K.BASE] = bases
        ks.ewm[:n] = z["ewm"]
        # scatter contiguous history into the blocks
        if total:
            starts = np.repeat(bases - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
            dest = np.arange(total, dtype=np.int64) + starts
            ks.arena_t[dest] = z["hist_t"]
            ks.arena_a[dest] = z["hist_a"]
            ks.arena_m[dest] = z["hist_m"]
        ks.meta[K.META_USED] = int(caps.sum())
        K.restore_promoted(z["promoted"], z["sums"], st._enc, tuning, ks)
        if "seen_keys" in z:  # version 3
            D.fill(st._seen_t, st._seen_e, z["seen_keys"], z["seen_times"], z["seen_entities"])
        return st
