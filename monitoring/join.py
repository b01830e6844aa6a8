"""Predictions joined with the outcomes that arrive after them (or before them), bounded.

An outcome names its prediction (``prediction_id``) or only its event (``event_id``): one
event may have several predictions (stream scoring and ``/predict``, champion and shadow),
and an outcome by event labels every one of them, including those that arrive after it.
Either side may come first and late. Each waits up to ``horizon_ms`` of *event time* (the
largest prediction or outcome time seen so far, the watermark), then leaves: a prediction
never labelled is counted as expired for its model version, an outcome that labelled
nothing as unmatched. So the state holds at most a horizon's worth of records.

Each prediction is joined at most once: a second outcome for it, or the same prediction
delivered twice (a replay after a restart), is counted as a duplicate and changes nothing.
:meth:`PredictionJoin.snapshot` / :meth:`PredictionJoin.restore` carry the whole state
through a checkpoint, so a restarted monitor neither loses nor double-counts a pair
(``tests/monitoring/test_join.py`` checks both against pandas and an uninterrupted run).
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

import msgspec

JOIN_STATE_VERSION = 2  # 2: pending outcomes by kind, matched event ids apart


class Scored(msgspec.Struct, frozen=True):
    """What the join keeps of a prediction."""

    prediction_id: str
    event_id: str | None
    model_version: str
    score: float
    time_ms: int  # the scored event's time (its prediction time where it has none)
    role: str = "champion"  # or "shadow": a challenger scored beside the champion


class Label(msgspec.Struct, frozen=True):
    """What the join keeps of an outcome."""

    event_id: str
    prediction_id: str | None
    label: int
    time_ms: int  # outcome time


@dataclass(frozen=True, slots=True)
class Joined:
    """A labelled prediction, ready for the quality window of its model version."""

    prediction_id: str
    model_version: str
    score: float
    label: int
    prediction_time_ms: int
    outcome_time_ms: int
    event_id: str | None = None
    role: str = "champion"


@dataclass
class JoinCounts:
    """What left the join without a pair, and what was refused as a repeat."""

    expired_predictions: Counter[str] = field(default_factory=Counter)  # by model version
    unmatched_outcomes: int = 0
    duplicate_predictions: int = 0
    duplicate_outcomes: int = 0


class _State(msgspec.Struct):
    version: int
    horizon_ms: int
    watermark: int | None
    waiting: list[Scored]
    labelled: list[tuple[str, int]]  # (prediction id, time) kept to refuse repeats
    pending_id: list[Label]  # outcomes naming a prediction not seen yet
    pending_event: list[Label]  # outcomes by event, kept for later predictions of it
    matched: list[str]  # event ids whose pending outcome labelled something
    expired_predictions: dict[str, int]
    unmatched_outcomes: int
    duplicate_predictions: int
    duplicate_outcomes: int


class PredictionJoin:
    """Joins predictions and outcomes by prediction id, else event id, within a horizon.

    >>> j = PredictionJoin(horizon_ms=1000)
    >>> j.add_outcome(Label("e1", None, 1, time_ms=10))  # the label first
    []
    >>> [p.label for p in j.add_prediction(Scored("p1", "e1", "v1", 0.8, time_ms=5))]
    [1]
    """

    def __init__(self, horizon_ms: int) -> None:
        if horizon_ms <= 0:
            raise ValueError(f"horizon_ms must be positive, got {horizon_ms}")
        self.horizon_ms = horizon_ms
        self.watermark: int | None = None
        self.counts = JoinCounts()
        self._waiting: dict[str, Scored] = {}  # unlabelled predictions by id
        self._by_event: dict[str, set[str]] = {}  # event id -> waiting prediction ids
        self._labelled: dict[str, int] = {}  # labelled prediction id -> its time
        self._pending_id: dict[str, Label] = {}  # outcomes naming a prediction not seen yet
        self._pending_event: dict[str, Label] = {}  # outcomes by event, kept for later ones
        self._matched: dict[str, None] = {}  # event ids whose pending outcome labelled
        # something (a dict: insertion order, so a restored join snapshots the same bytes)
        self._expiry: list[tuple[int, int, str]] = []  # (time, kind, key): a min-heap

    # ------------------------------------------------------------------ input

    def add_prediction(self, p: Scored) -> list[Joined]:
        """Take one prediction; the pairs it completes (at most one)."""
        pid = p.prediction_id
        if pid in self._waiting or pid in self._labelled:
            self.counts.duplicate_predictions += 1
            return []
        label = self._pending_id.pop(pid, None)
        if label is None and p.event_id is not None:
            label = self._pending_event.get(p.event_id)
            if label is not None:
                self._matched[p.event_id] = None
        if label is not None:
            out = [self._pair(p, label)]
        else:
            out = []
            self._waiting[pid] = p
            if p.event_id is not None:
                self._by_event.setdefault(p.event_id, set()).add(pid)
            heapq.heappush(self._expiry, (p.time_ms, _PREDICTION, pid))
        self._advance(p.time_ms)
        return out

    def add_outcome(self, o: Label) -> list[Joined]:
        """Take one outcome; the pairs it completes (one per waiting prediction it labels)."""
        out: list[Joined] = []
        if o.prediction_id is not None:
            pid = o.prediction_id
            if pid in self._labelled or pid in self._pending_id:
                self.counts.duplicate_outcomes += 1
            elif pid in self._waiting:
                out.append(self._pair(self._unwait(pid), o))
            else:
                self._pending_id[pid] = o
                heapq.heappush(self._expiry, (o.time_ms, _PENDING_ID, pid))
        else:
            eid = o.event_id
            if eid in self._pending_event:
                self.counts.duplicate_outcomes += 1
            else:
                for pid in sorted(self._by_event.get(eid, ())):
                    out.append(self._pair(self._unwait(pid), o))
                if out:
                    self._matched[eid] = None
                self._pending_event[eid] = o  # later predictions of the event join it too
                heapq.heappush(self._expiry, (o.time_ms, _PENDING_EVENT, eid))
        self._advance(o.time_ms)
        return out

    # ------------------------------------------------------------------ state

    def __len__(self) -> int:
        """Records held: waiting predictions, labelled ids kept, pending outcomes."""
        return (
            len(self._waiting) + len(self._labelled) + len(self._pending_id)
            + len(self._pending_event)
        )  # fmt: skip

    def waiting(self) -> list[Scored]:
        """The predictions still waiting for their outcome."""
        return list(self._waiting.values())

    def labelled_times(self) -> list[int]:
        """The times of the labelled predictions still held (within the horizon)."""
        return list(self._labelled.values())

    def snapshot(self) -> bytes:
        """The whole state, for a checkpoint (:meth:`restore` reads it back)."""
        c = self.counts
        # whole containers only (no per-record Python): a checkpoint of 200k records runs
        # in the monitor's loop every few seconds
        return msgspec.msgpack.encode(
            _State(
                JOIN_STATE_VERSION, self.horizon_ms, self.watermark,
                list(self._waiting.values()), list(self._labelled.items()),
                list(self._pending_id.values()), list(self._pending_event.values()),
                list(self._matched), dict(c.expired_predictions), c.unmatched_outcomes,
                c.duplicate_predictions, c.duplicate_outcomes,
            )
        )  # fmt: skip

    @staticmethod
    def restore(data: bytes) -> PredictionJoin:
        """The join a :meth:`snapshot` was taken of."""
        s = msgspec.msgpack.decode(data, type=_State)
        if s.version != JOIN_STATE_VERSION:
            raise ValueError(f"join state version {s.version}, expected {JOIN_STATE_VERSION}")
        j = PredictionJoin(s.horizon_ms)
        j.watermark = s.watermark
        j.counts = JoinCounts(
            Counter(s.expired_predictions), s.unmatched_outcomes,
            s.duplicate_predictions, s.duplicate_outcomes,
        )  # fmt: skip
        for p in s.waiting:
            j._waiting[p.prediction_id] = p
            if p.event_id is not None:
                j._by_event.setdefault(p.event_id, set()).add(p.prediction_id)
            j._expiry.append((p.time_ms, _PREDICTION, p.prediction_id))
        for pid, t in s.labelled:
            j._labelled[pid] = t
            j._expiry.append((t, _LABELLED, pid))
        for label in s.pending_id:
            assert label.prediction_id is not None
            j._pending_id[label.prediction_id] = label
            j._expiry.append((label.time_ms, _PENDING_ID, label.prediction_id))
        for label in s.pending_event:
            j._pending_event[label.event_id] = label
            j._expiry.append((label.time_ms, _PENDING_EVENT, label.event_id))
        j._matched = dict.fromkeys(s.matched)
        heapq.heapify(j._expiry)
        return j

    # ------------------------------------------------------------------ internals

    def _unwait(self, pid: str) -> Scored:
        p = self._waiting.pop(pid)
        if p.event_id is not None:
            ids = self._by_event[p.event_id]
            ids.discard(pid)
            if not ids:
                del self._by_event[p.event_id]
        return p

    def _pair(self, p: Scored, o: Label) -> Joined:
        self._labelled[p.prediction_id] = p.time_ms
        heapq.heappush(self._expiry, (p.time_ms, _LABELLED, p.prediction_id))
        return Joined(
            p.prediction_id, p.model_version, p.score, o.label, p.time_ms, o.time_ms,
            p.event_id, p.role,
        )  # fmt: skip

    def _advance(self, time_ms: int) -> None:
        """Move the watermark to ``time_ms`` if later; drop what is past the horizon."""
        if self.watermark is not None and time_ms <= self.watermark:
            return
        self.watermark = time_ms
        cutoff = time_ms - self.horizon_ms
        heap = self._expiry
        while heap and heap[0][0] < cutoff:
            t, kind, key = heapq.heappop(heap)
            if kind == _PREDICTION:
                p = self._waiting.get(key)
                if p is not None and p.time_ms == t:
                    self._unwait(key)
                    self.counts.expired_predictions[p.model_version] += 1
            elif kind == _LABELLED:
                if self._labelled.get(key) == t:
                    del self._labelled[key]
            elif kind == _PENDING_ID:
                label = self._pending_id.get(key)
                if label is not None and label.time_ms == t:
                    del self._pending_id[key]
                    self.counts.unmatched_outcomes += 1
            else:
                label = self._pending_event.get(key)
                if label is not None and label.time_ms == t:
                    del self._pending_event[key]
                    if key in self._matched:
                        self._matched.pop(key, None)
                    else:
                        self.counts.unmatched_outcomes += 1


_PREDICTION, _LABELLED, _PENDING_ID, _PENDING_EVENT = range(4)
