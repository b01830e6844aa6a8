"""Shadow evaluation: the champion and a challenger on the same labelled events, live.

While a challenger runs in shadow, stream scoring publishes two predictions per event (role
``champion`` and ``shadow``); the join labels both with the event's outcome. This window
pairs them by event id and keeps the latest ``size`` complete pairs per (champion, shadow)
couple; each snapshot compares the two with DeLong's paired test
(:func:`inference.gate.delong`), so the verdict comes from the same events, not from two
separate windows. Its rows (``model_version`` the shadow, ``feature`` the champion it is
compared with; ``samples`` the paired events):

- ``shadow_auc`` and ``shadow_champion_auc``: each model's AUC on the paired events;
- ``shadow_auc_gain``: shadow minus champion; ``shadow_auc_gain_se``: its standard error.

The trainer turns gain and standard error into its promotion decision with its own margin
and confidence (:func:`inference.gate.decide`). A half pair (one role labelled, the other
not yet) waits among at most ``4 * size`` others, the oldest leaving first. Until a shadow
prediction has been seen (:attr:`ShadowWindow.active`, set by the monitor's core) no half is
kept: the worker publishes an event's shadow prediction right after its champion one, on the
same partition, before any outcome can pair either, and keeping a half of every labelled
event of a monitor without shadows cost it a tenth of its time.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

import msgspec
import numpy as np

from inference.gate import delong
from monitoring.join import Joined
from monitoring.snapshot import MetricRow

SHADOW_STATE_VERSION = 2  # 2: active
SHADOW_METRICS = ("shadow_auc", "shadow_champion_auc", "shadow_auc_gain", "shadow_auc_gain_se")


class _Half(msgspec.Struct, array_like=True):
    label: int
    champion: tuple[str, float] | None = None  # (version, score)
    shadow: tuple[str, float] | None = None


class _State(msgspec.Struct):
    version: int
    size: int
    active: bool
    halves: list[tuple[str, _Half]]
    pairs: list[tuple[str, str, list[tuple[int, float, float]]]]


class ShadowWindow:
    """Champion/shadow score pairs of the same labelled events, per (champion, shadow)."""

    def __init__(self, size: int = 5000) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
        self.active = False  # a shadow prediction has been seen: pairs can form
        self._halves: OrderedDict[str, _Half] = OrderedDict()
        # (champion, shadow) -> (label, champion score, shadow score), newest last
        self.pairs: dict[tuple[str, str], deque[tuple[int, float, float]]] = {}

    def add(self, pair: Joined) -> None:
        """Take one labelled prediction (those without an event id cannot be paired)."""
        if pair.event_id is None or not (self.active or pair.role == "shadow"):
            return
        self.active = True
        half = self._halves.get(pair.event_id)
        if half is None:
            half = self._halves[pair.event_id] = _Half(int(pair.label))
            if len(self._halves) > 4 * self.size:
                self._halves.popitem(last=False)
        side = (pair.model_version, float(pair.score))
        if pair.role == "shadow":
            half.shadow = side
        else:
            half.champion = side
        if half.champion is not None and half.shadow is not None:
            del self._halves[pair.event_id]
            key = (half.champion[0], half.shadow[0])
            window = self.pairs.get(key)
            if window is None:
                window = self.pairs[key] = deque(maxlen=self.size)
            window.append((half.label, half.champion[1], half.shadow[1]))

    def rows(self, time_ms: int) -> list[MetricRow]:
        """The comparison of every couple with enough of each class (2 positives and 2
        negatives at least) to compare."""
        rows = []
        for (champion, shadow), window in sorted(self.pairs.items()):
            data = np.array(window, dtype=np.float64)
            labels = data[:, 0].astype(np.int8)
            positives = int(labels.sum())
            if positives < 2 or len(labels) - positives < 2:
                continue
            r = delong(labels, data[:, 2], data[:, 1])
            n = len(labels)
            values = (r.auc_a, r.auc_b, r.difference, math.sqrt(r.variance))
            for metric, value in zip(SHADOW_METRICS, values, strict=True):
                rows.append(MetricRow(time_ms, shadow, metric, champion, float(value), n))
        return rows

    def snapshot(self) -> bytes:
        """The whole state, for a checkpoint."""
        return msgspec.msgpack.encode(
            _State(
                SHADOW_STATE_VERSION,
                self.size,
                self.active,
                list(self._halves.items()),
                [(c, s, list(w)) for (c, s), w in self.pairs.items()],
            )
        )

    @staticmethod
    def restore(data: bytes) -> ShadowWindow:
        """The window a :meth:`snapshot` was taken of."""
        s = msgspec.msgpack.decode(data, type=_State)
        if s.version != SHADOW_STATE_VERSION:
            raise ValueError(f"shadow state version {s.version}, expected {SHADOW_STATE_VERSION}")
        w = ShadowWindow(s.size)
        w.active = s.active
        w._halves = OrderedDict(s.halves)
        w.pairs = {(c, sh): deque(map(tuple, p), maxlen=s.size) for c, sh, p in s.pairs}
        return w
