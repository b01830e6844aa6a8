"""A retraining request carried to its decision, restart-safe, without Kafka.

:class:`Retrainer` takes one request through the steps below and writes each decision to
the model history (:mod:`inference.model_events`) with the request's id in its metrics:

1. ``triggered``: the request's reason and the values that fired it;
2. ``trained``: a challenger trained on the recent window of offline features and stored
   outcomes (:func:`inference.train.training_set_by_event`), registered, and judged against
   the champion on the same most-recent holdout (:func:`inference.gate.challenger_wins`);
   the verdict is part of the row;
3. ``rejected`` if it lost there; ``promoted`` if it won (or there is no champion) and no
   shadow trial is asked for; else ``shadow_started``: the registry's shadow alias names it,
   stream scoring scores every event with both models, and :meth:`Retrainer.conclude`
   takes the monitor's live comparison on the same labelled events to ``promoted`` or
   ``rejected`` (or ``rejected`` when no verdict comes within the timeout).

The history is the state. Before each step it reads what the history already holds for
the request, so a trainer killed at any point and restarted resumes where it stopped: it
never trains twice, never promotes twice, and a request whose decision is written is
skipped. Promotion itself is idempotent (the alias already names the version), so a crash
between moving the alias and writing ``promoted`` only writes the row on restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from features.scoring_row import SCORING_FEATURES
from inference.model_events import ModelEvents
from inference.registry import ModelRegistry
from infra.config import Stores

if TYPE_CHECKING:  # onnxruntime and scipy load only when a request is handled (CLI start-up)
    import numpy as np

    from inference.gate import GateVerdict
    from inference.onnx_model import LoadedModel

log = logging.getLogger(__name__)

DONE = ("promoted", "rejected")


@dataclass(frozen=True)
class RetrainSettings:
    """How a challenger is trained and judged (composed from ``Settings``)."""

    history_s: float = 7 * 86_400.0  # event time of training data before the newest label
    margin: float = 0.0  # the challenger's AUC must beat the champion's by more than this
    alpha: float = 0.05  # one-sided confidence of the paired test
    shadow: bool = False  # trial the winner live before promoting it
    shadow_min_labels: int = 1000  # paired labelled events the live verdict needs
    shadow_timeout_s: float = 900.0  # wall-clock wait for that verdict, then rejected
    min_new_labels: int = 0  # labelled events after the firing to wait for before training
    label_wait_s: float = 900.0  # wall-clock limit of that wait (then it trains on what is)


@dataclass(frozen=True)
class Request:
    """What the retrainer needs of a request (``infra.retrain.RetrainRequest``)."""

    request_id: str
    model_version: str | None
    reason: str
    values: dict[str, float]
    event_time_ms: int | None = None  # the newest scored event's time at the firing


@dataclass(frozen=True)
class Outcome:
    """Where a request stands after :meth:`Retrainer.handle` or :meth:`Retrainer.conclude`."""

    kind: str  # the last decision: promoted, rejected or shadow_started
    version: str | None  # the challenger
    reason: str


class Retrainer:
    """Takes requests to decisions over one registry and its history."""

    def __init__(
        self,
        stores: Stores,
        settings: RetrainSettings = RetrainSettings(),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stores = stores
        self.settings = settings
        self.registry = ModelRegistry(stores.models_dir)
        self.history = ModelEvents(stores.models_dir)
        self.clock = clock

    # ------------------------------------------------------------------ steps

    def rows_of(self, request_id: str) -> list[dict[str, Any]]:
        """The decisions already recorded for ``request_id``, oldest first."""
        return [r for r in self.history.rows() if r["metrics"].get("request_id") == request_id]

    def needs_labels(self, request: Request) -> bool:
        """Whether training should wait for labels of events after the firing (not yet
        trained, and the settings and the request ask for it)."""
        if self.settings.min_new_labels <= 0 or request.event_time_ms is None:
            return False
        return not any(r["kind"] == "trained" for r in self.rows_of(request.request_id))

    def new_labels(self, after_ms: int) -> int:
        """Stored labels of events whose time is after ``after_ms``."""
        import duckdb

        offline, outcomes = self.stores.offline_dir, self.stores.outcomes_dir
        if not any(offline.glob("*.parquet")) or not any(outcomes.glob("*.parquet")):
            return 0
        query = f"""
            SELECT count(DISTINCT o.event_id) FROM read_parquet('{outcomes}/*.parquet') o
            JOIN (SELECT DISTINCT event_id FROM read_parquet('{offline}/*.parquet')
                  WHERE epoch_ms(event_timestamp) > {int(after_ms)}) e USING (event_id)
        """
        with duckdb.connect() as con:
            return int(con.execute(query).fetchone()[0])

    def acknowledge(self, request: Request) -> None:
        """Record ``triggered`` for ``request`` unless the history has it."""
        if not any(r["kind"] == "triggered" for r in self.rows_of(request.request_id)):
            self._record(
                "triggered", request.model_version, request,
                self.registry.champion_version(), request.reason, {"values": request.values},
            )  # fmt: skip

    def handle(self, request: Request) -> Outcome:
        """Take ``request`` as far as it goes without the monitor (see the module doc)."""
        rows = self.rows_of(request.request_id)
        kinds = {r["kind"]: r for r in rows}
        for kind in (*DONE, "shadow_started"):
            if kind in kinds:
                row = kinds[kind]
                return Outcome(kind, row["model_version"], row["reason"])
        self.acknowledge(request)
        champion = self.registry.champion_version()
        stale = request.model_version is not None and request.model_version != champion
        if stale and "trained" not in kinds:  # (after "trained", a restart mid-promotion)
            return self._finish(
                "rejected", None, request, champion,
                f"stale: the request is about {request.model_version}, the champion is now "
                f"{champion}",
            )  # fmt: skip
        trained = kinds.get("trained")
        if trained is None:
            try:
                trained = self._train(request, champion)
            except ValueError as exc:  # too few rows, one class only: say so, keep serving
                return self._finish("rejected", None, request, champion, f"not trained: {exc}")
        version = trained["model_version"]
        gate = trained["metrics"]["gate"]
        if not gate["promote"]:
            return self._finish("rejected", version, request, champion, gate["reason"])
        if champion is None or not self.settings.shadow:
            return self._promote(version, request, champion, gate["reason"])
        self.registry.start_shadow(version, SCORING_FEATURES)
        reason = f"offline gate passed ({gate['reason']}); now scored in shadow"
        self._record("shadow_started", version, request, champion, reason, {})
        return Outcome("shadow_started", version, reason)

    def conclude(self, request: Request, verdict: GateVerdict | None) -> Outcome | None:
        """Decide a shadow trial from the monitor's ``verdict`` (None: none yet); None while
        it should go on waiting."""
        rows = self.rows_of(request.request_id)
        kinds = {r["kind"]: r for r in rows}
        for kind in DONE:
            if kind in kinds:
                return Outcome(kind, kinds[kind]["model_version"], kinds[kind]["reason"])
        started = kinds["shadow_started"]
        version = started["model_version"]
        champion = self.registry.champion_version()
        if champion == version:  # promoted before a crash, the row not yet written
            return self._finish("promoted", version, request, started["champion_version"],
                                started["reason"])  # fmt: skip
        if verdict is None:
            waited = self.clock() - started["time_ms"] / 1000
            if waited < self.settings.shadow_timeout_s:
                return None
            self.registry.end_shadow()
            return self._finish(
                "rejected", version, request, champion,
                f"no live verdict within {self.settings.shadow_timeout_s:g} s of shadow scoring",
            )  # fmt: skip
        figures = {
            "champion_auc": verdict.champion_auc,
            "challenger_auc": verdict.challenger_auc,
            "p_value": verdict.p_value,
        }
        if verdict.promote:
            return self._promote(version, request, champion, f"shadow: {verdict.reason}", figures)
        self.registry.end_shadow()
        return self._finish("rejected", version, request, champion, f"shadow: {verdict.reason}")

    # ------------------------------------------------------------------ internals

    def _train(self, request: Request, champion: str | None) -> dict[str, Any]:
        from inference.onnx_model import load_model
        from inference.train import train, training_set_by_event
        from inference.workflow import stored_labels

        labels = stored_labels(self.stores.outcomes_dir)
        data = training_set_by_event(
            self.stores.offline_dir, labels, history_ms=int(self.settings.history_s * 1000)
        )
        model = train(data)
        metadata = {**model.metadata, "request_id": request.request_id}
        version = self.registry.register(model.onnx, metadata).version
        loaded = load_model(version, model.onnx, SCORING_FEATURES)
        verdict = self._gate(champion, loaded, model.holdout_features, model.holdout_label)
        metrics = {
            "holdout": model.metadata["holdout_metrics"],
            "rows": model.metadata["rows"],
            "training_window": model.metadata["training_window"],
            "gate": {"promote": verdict[0], "reason": verdict[1]},
        }
        return self._record("trained", version, request, champion, verdict[1], metrics)

    def _gate(
        self, champion: str | None, challenger: LoadedModel, features: np.ndarray,
        labels: np.ndarray,
    ) -> tuple[bool, str]:  # fmt: skip
        """The offline verdict: both models on the challenger's holdout (never trained on)."""
        from inference.gate import challenger_wins
        from inference.onnx_model import load_model

        if champion is None:
            return True, "no champion yet"
        _, blob = self.registry.load_verified(champion, SCORING_FEATURES)
        old = load_model(champion, blob, SCORING_FEATURES).score(features)
        new = challenger.score(features)
        try:
            v = challenger_wins(
                labels, old, new, margin=self.settings.margin, alpha=self.settings.alpha
            )
        except ValueError as exc:  # a holdout with too few of one class
            return False, f"holdout cannot compare the models: {exc}"
        return v.promote, f"holdout: {v.reason}"

    def _promote(
        self,
        version: str,
        request: Request,
        champion: str | None,
        reason: str,
        figures: dict[str, Any] | None = None,
    ) -> Outcome:
        self.registry.promote(version, SCORING_FEATURES)
        return self._finish("promoted", version, request, champion, reason, figures)

    def _finish(
        self,
        kind: str,
        version: str | None,
        request: Request,
        champion: str | None,
        reason: str,
        figures: dict[str, Any] | None = None,
    ) -> Outcome:
        self._record(kind, version, request, champion, reason, figures or {})
        log.warning("%s %s: %s", kind, version, reason)
        return Outcome(kind, version, reason)

    def _record(
        self,
        kind: str,
        version: str | None,
        request: Request,
        champion: str | None,
        reason: str,
        metrics: dict[str, Any],
    ) -> dict[str, Any]:
        row = self.history.append(
            kind,
            version,
            champion_version=champion,
            reason=reason,
            metrics={**metrics, "request_id": request.request_id},
            time_ms=int(self.clock() * 1000),
        )
        return row
