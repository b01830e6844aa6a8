"""The monitor's state and logic without Kafka: records in, snapshots and triggers out.

:class:`MonitorCore` takes decoded predictions and outcomes in arrival order. Predictions
feed, per model version, a drift window over the version's reference bins (when the
registry knows the version) and wait in the join; each joined pair goes to its version's
quality window. A version unknown to the registry is still monitored for quality. At each
snapshot it gives the long-form rows (:mod:`monitoring.snapshot`) of every version: the
quality and drift metrics, and the data-quality ones:

- ``predictions`` (count in the snapshot interval), ``features_missing`` (share of those
  with ``features_found`` false), ``expired_predictions`` (total, never labelled within the
  horizon), ``unmatched_outcomes`` and ``duplicate_records`` (totals, model-level rows of
  version ``*``), ``freshness_s`` (snapshot time minus the newest scored event's time);
- ``label_completeness`` by prediction age (``feature`` is the age band): the share of the
  predictions of that age, still within the horizon, whose outcome has arrived (labels
  mature late: a low value for young predictions is normal, for old ones it is not).

While a challenger runs in shadow, :class:`~monitoring.shadow.ShadowWindow` pairs its
labelled predictions with the champion's of the same events and adds the ``shadow_*`` rows.
The retraining :class:`~monitoring.policy.Trigger` reads the champion's rows. The whole
state (join, windows, trigger, counters) snapshots for a checkpoint
(``tests/monitoring/test_core.py``: quality equal to scikit-learn on the joined pairs,
restore at any point equal to an uninterrupted run).
"""

from __future__ import annotations

import logging
import operator
from collections import Counter
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from inference.exceptions import ModelRejected, UnknownVersion
from inference.registry import ModelRegistry
from infra.predictions import Prediction
from monitoring.drift import DriftWindow, Reference
from monitoring.join import Label, PredictionJoin, Scored
from monitoring.policy import HOLDOUT_SAMPLES, Fired, Policy, Trigger
from monitoring.quality import QualityWindow
from monitoring.shadow import ShadowWindow
from monitoring.snapshot import MetricRow, rows_of

log = logging.getLogger(__name__)

CORE_STATE_VERSION = 2  # 2: drift windows keep each prediction's entity
ALL_VERSIONS = "*"
# label completeness by prediction age: (band name, upper bound in ms)
AGE_BANDS = (("<1m", 60_000), ("1m-10m", 600_000), ("10m-1h", 3_600_000),
             ("1h-6h", 21_600_000), ("6h-24h", 86_400_000), (">=24h", 2**62))  # fmt: skip


class ModelBook:
    """What the monitor needs to know of model versions: reference bins, holdout metrics,
    the champion. Built from the registry (:func:`monitoring.registry_book`) or by hand."""

    def __init__(
        self,
        references: Callable[[str], dict[str, Reference] | None],
        holdout: Callable[[str], dict[str, float]],
        champion: Callable[[], str | None],
    ) -> None:
        self.references = references
        self.holdout = holdout
        self.champion = champion


def registry_book(registry: ModelRegistry) -> ModelBook:
    """A :class:`ModelBook` reading the registry: each version's reference histograms and
    holdout metrics as trained (read once per version), the champion as it is now. A
    version or alias edited into nonsense reads as unknown (logged): the monitor goes on
    measuring, and fires no trigger on a champion it cannot name."""

    def metadata(version: str) -> dict | None:
        try:
            return registry.get(version).metadata
        except (UnknownVersion, ModelRejected) as exc:
            log.warning("model %s: %s", version, str(exc).strip("'\""))
            return None

    def references(version: str) -> dict[str, Reference] | None:
        hists = (metadata(version) or {}).get("reference_histograms") or {}
        return {name: Reference.of(h) for name, h in hists.items()} or None

    def holdout(version: str) -> dict[str, float]:
        meta = metadata(version) or {}
        metrics = meta.get("holdout_metrics") or {}
        found = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        rows = meta.get("rows") or {}
        if isinstance(rows.get("holdout"), int):
            found[HOLDOUT_SAMPLES] = float(rows["holdout"])
        return found

    def champion() -> str | None:
        try:
            return registry.champion_version()
        except ModelRejected as exc:
            log.warning("no champion to judge: %s", exc)
            return None

    return ModelBook(references, holdout, champion)


def _feature_matrix(predictions: Sequence[Prediction], names: Sequence[str]) -> np.ndarray:
    """[n, len(names)] feature values (NaN where a prediction lacks one: underflow bin)."""
    if not names:
        return np.empty((len(predictions), 0))
    pick = operator.itemgetter(*names)
    try:
        rows = [pick(p.features) for p in predictions]  # C-level, ~4x the loop below
    except KeyError:
        rows = [tuple(p.features.get(n, np.nan) for n in names) for p in predictions]
    return np.array(rows, dtype=np.float64).reshape(len(predictions), len(names))


class _CoreState(msgspec.Struct):
    version: int
    join: bytes
    quality: dict[str, bytes]
    drift: dict[str, bytes]
    no_reference: list[str]
    trigger: bytes
    missing: dict[str, int]
    seen: dict[str, int]
    joined: dict[str, int]
    newest_ms: int | None
    shadow: bytes = b""


class MonitorCore:
    """Predictions and outcomes in, snapshot rows and retraining requests out."""

    def __init__(
        self,
        book: ModelBook,
        *,
        horizon_ms: int = 86_400_000,
        window_labels: int = 5000,
        window_events: int = 5000,
        policy: Policy | None = None,
    ) -> None:
        self.book = book
        self.window_labels = window_labels
        self.window_events = window_events
        self.join = PredictionJoin(horizon_ms)
        self.trigger = Trigger(policy or Policy())
        self.quality: dict[str, QualityWindow] = {}
        self.shadow = ShadowWindow(window_labels)
        self.drift: dict[str, DriftWindow] = {}
        self._no_reference: set[str] = set()  # versions the registry has no bins for
        self._missing: Counter[str] = Counter()  # features_found false, since the snapshot
        self._seen: Counter[str] = Counter()  # predictions since the last snapshot
        self.joined: Counter[str] = Counter()  # labelled predictions so far, by version
        self.newest_ms: int | None = None  # the newest scored event's time

    # ------------------------------------------------------------------ input

    def add_predictions(self, predictions: Sequence[Prediction]) -> None:
        """Take predictions in arrival order."""
        by_version: dict[str, list[Prediction]] = {}
        for p in predictions:
            by_version.setdefault(p.model_version, []).append(p)
            if p.role == "shadow":
                self.shadow.active = True
            scored = Scored(
                p.prediction_id, p.event_id, p.model_version, p.score, p.time_ms, p.role
            )
            if self.newest_ms is None or p.time_ms > self.newest_ms:
                self.newest_ms = p.time_ms
            self._to_quality(self.join.add_prediction(scored))
        for version, preds in by_version.items():
            self._seen[version] += len(preds)
            missing = sum(1 for p in preds if not p.features_found)
            if missing:
                self._missing[version] += missing
            window = self._drift_window(version)
            if window is None:
                continue
            found = [p for p in preds if p.features_found]
            if not found:
                continue
            names = [n for n in window.names if n != "score"]
            columns = dict(zip(names, _feature_matrix(found, names).T, strict=True))
            if "score" in window.names:
                columns["score"] = np.array([p.score for p in found])
            window.add_many(columns, np.fromiter((p.user_id for p in found), np.int64, len(found)))

    def add_outcomes(self, labels: Sequence[Label]) -> None:
        """Take outcomes in arrival order."""
        for label in labels:
            self._to_quality(self.join.add_outcome(label))

    # ------------------------------------------------------------------ output

    def snapshot(self, time_ms: int) -> tuple[list[MetricRow], Fired | None]:
        """The rows of every version at ``time_ms``, and a retraining request if the policy
        fires on the champion's."""
        rows: list[MetricRow] = []
        for version in sorted(set(self.quality) | set(self.drift) | set(self._seen)):
            rows += rows_of(time_ms, version, self.quality.get(version), self.drift.get(version))
            seen = self._seen.get(version, 0)
            rows.append(MetricRow(time_ms, version, "predictions", None, float(seen), seen))
            share = self._missing.get(version, 0) / seen if seen else float("nan")
            rows.append(MetricRow(time_ms, version, "features_missing", None, share, seen))
            expired = self.join.counts.expired_predictions.get(version, 0)
            rows.append(
                MetricRow(time_ms, version, "expired_predictions", None, float(expired), expired)
            )
        rows += self.shadow.rows(time_ms)
        rows += self._completeness(time_ms)
        if self.newest_ms is not None:  # how old the newest scored event is: stalls show
            age = (time_ms - self.newest_ms) / 1000.0
            rows.append(MetricRow(time_ms, ALL_VERSIONS, "freshness_s", None, age, 1))
        c = self.join.counts
        for metric, value in (
            ("unmatched_outcomes", c.unmatched_outcomes),
            ("duplicate_records", c.duplicate_predictions + c.duplicate_outcomes),
        ):
            rows.append(MetricRow(time_ms, ALL_VERSIONS, metric, None, float(value), value))
        self._seen.clear()
        self._missing.clear()
        champion = self.book.champion()
        fired = None
        if champion is not None:
            fired = self.trigger.observe(rows, champion, self.book.holdout(champion))
        return rows, fired

    # ------------------------------------------------------------------ state

    def state(self) -> bytes:
        """Everything, for a checkpoint (:meth:`restore` reads it back)."""
        return msgspec.msgpack.encode(
            _CoreState(
                CORE_STATE_VERSION,
                self.join.snapshot(),
                {v: w.snapshot() for v, w in self.quality.items()},
                {v: w.snapshot() for v, w in self.drift.items()},
                sorted(self._no_reference),
                self.trigger.snapshot(),
                dict(self._missing),
                dict(self._seen),
                dict(self.joined),
                self.newest_ms,
                self.shadow.snapshot(),
            )
        )

    def restore(self, data: bytes) -> None:
        """Replace this core's state by a :meth:`state` (settings stay this core's)."""
        s = msgspec.msgpack.decode(data, type=_CoreState)
        if s.version != CORE_STATE_VERSION:
            raise ValueError(f"monitor state version {s.version}, expected {CORE_STATE_VERSION}")
        self.join = PredictionJoin.restore(s.join)
        self.quality = {v: QualityWindow.restore(b) for v, b in s.quality.items()}
        self.drift = {v: DriftWindow.restore(b) for v, b in s.drift.items()}
        self._no_reference = set(s.no_reference)
        self.trigger = Trigger.restore(self.trigger.policy, s.trigger)
        self._missing = Counter(s.missing)
        self._seen = Counter(s.seen)
        self.joined = Counter(s.joined)
        self.newest_ms = s.newest_ms
        self.shadow = (
            ShadowWindow.restore(s.shadow) if s.shadow else ShadowWindow(self.window_labels)
        )

    # ------------------------------------------------------------------ internals

    def _to_quality(self, pairs: list) -> None:
        for pair in pairs:
            self.joined[pair.model_version] += 1
            window = self.quality.get(pair.model_version)
            if window is None:
                window = self.quality[pair.model_version] = QualityWindow(self.window_labels)
            window.add(pair.score, pair.label)
            self.shadow.add(pair)

    def _drift_window(self, version: str) -> DriftWindow | None:
        window = self.drift.get(version)
        if window is None and version not in self._no_reference:
            refs = self.book.references(version)
            if not refs:
                self._no_reference.add(version)
                return None
            window = self.drift[version] = DriftWindow(refs, self.window_events)
        return window

    def _completeness(self, time_ms: int) -> list[MetricRow]:
        """Share labelled, by age band, of the predictions the join still holds."""
        now = self.join.watermark
        if now is None:
            return []
        waiting = np.array([p.time_ms for p in self.join.waiting()], dtype=np.int64)
        labelled = np.array(self.join.labelled_times(), dtype=np.int64)
        edges = np.array([upper for _, upper in AGE_BANDS], dtype=np.int64)
        band_w = np.searchsorted(edges, now - waiting, side="right")
        band_l = np.searchsorted(edges, now - labelled, side="right")
        n_w = np.bincount(band_w, minlength=len(edges))
        n_l = np.bincount(band_l, minlength=len(edges))
        rows = []
        for k, (name, _) in enumerate(AGE_BANDS):
            total = int(n_w[k] + n_l[k])
            if total:
                share = float(n_l[k] / total)
                rows.append(
                    MetricRow(time_ms, ALL_VERSIONS, "label_completeness", name, share, total)
                )
        return rows
