"""Retraining requests carried to decisions: better challengers promoted, worse ones
rejected, shadow trials concluded, and no request ever acted on twice."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inference.gate import GateVerdict
from inference.model_events import ModelEvents, verify
from inference.registry import ModelRegistry
from inference.retraining import Request, Retrainer, RetrainSettings
from infra.config import Stores
from tests.inference.world import CHANGE, T0, N, World


def _request(rid: str, version: str | None) -> Request:
    return Request(rid, version, "psi(amount_mean_1h) = 0.4 breached psi(*) > 0.25", {"psi": 0.4})


def _kinds(stores: Stores) -> list[str]:
    return [r["kind"] for r in ModelEvents(stores.models_dir).rows()]


@pytest.fixture
def stores(tmp_path: Path) -> Stores:
    return Stores(tmp_path / "home", "sqlite")


def test_after_the_change_a_retrained_challenger_wins_and_is_promoted(stores: Stores) -> None:
    world = World(stores, change=True)
    world.write(T0, CHANGE)
    retrainer = Retrainer(stores, RetrainSettings(history_s=3 * 3600.0))
    first = retrainer.handle(_request("r0", None))
    assert (first.kind, first.version, first.reason) == ("promoted", "v0001", "no champion yet")

    world.write(CHANGE, T0 + 10 * N * 1000)
    second = retrainer.handle(_request("r1", "v0001"))
    assert (second.kind, second.version) == ("promoted", "v0002"), second.reason
    assert second.reason.startswith("holdout: better: challenger AUC")
    registry = ModelRegistry(stores.models_dir)
    assert registry.champion_version() == "v0002"
    meta = registry.get("v0002").metadata
    assert meta["request_id"] == "r1"
    start = np.datetime64(meta["training_window"]["start"][:23])
    assert start >= np.datetime64(CHANGE - 3 * 3600 * 1000 - 1, "ms")  # the recent window
    assert _kinds(stores) == ["triggered", "trained", "promoted"] * 2
    rows = ModelEvents(stores.models_dir).rows()
    assert rows[-1]["champion_version"] == "v0001"
    assert verify(stores.models_dir) == []

    again = retrainer.handle(_request("r1", "v0001"))  # a redelivered request
    assert again == second
    assert len(ModelEvents(stores.models_dir).rows()) == 6
    assert registry.versions() == ["v0001", "v0002"]


def test_a_challenger_that_is_not_better_is_rejected_and_the_champion_kept(
    stores: Stores,
) -> None:
    world = World(stores, change=False)
    world.write(T0, T0 + 10 * N * 1000)
    Retrainer(stores).handle(_request("r0", None))  # the champion: all 24k rows
    # the challenger: only the last 40 minutes, so a smaller training set of the same world
    small = Retrainer(stores, RetrainSettings(history_s=2400.0, margin=0.01))
    outcome = small.handle(_request("r1", "v0001"))
    assert outcome.kind == "rejected", outcome.reason
    assert outcome.reason.startswith(("holdout: no better", "holdout: not significant"))
    registry = ModelRegistry(stores.models_dir)
    assert registry.champion_version() == "v0001"
    assert registry.versions() == ["v0001", "v0002"]  # registered, never promoted
    assert _kinds(stores)[-3:] == ["triggered", "trained", "rejected"]


def test_a_crash_between_promotion_and_its_row_writes_the_row_once(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    World(stores, change=False).write(T0, T0 + 10 * N * 1000)
    real = ModelEvents.append

    def crash_on_promoted(self, kind, *args, **kwargs):
        if kind == "promoted":
            raise SystemExit("killed")
        return real(self, kind, *args, **kwargs)

    monkeypatch.setattr(ModelEvents, "append", crash_on_promoted)
    with pytest.raises(SystemExit):
        Retrainer(stores).handle(_request("r0", None))
    registry = ModelRegistry(stores.models_dir)
    assert registry.champion_version() == "v0001"  # the alias moved, the row is missing
    monkeypatch.setattr(ModelEvents, "append", real)
    outcome = Retrainer(stores).handle(_request("r0", None))  # the restarted trainer
    assert (outcome.kind, outcome.version) == ("promoted", "v0001")
    assert _kinds(stores) == ["triggered", "trained", "promoted"]
    assert registry.versions() == ["v0001"]  # not trained again


def test_shadow_trials_conclude_on_the_live_verdict(stores: Stores) -> None:
    World(stores, change=False).write(T0, T0 + 10 * N * 1000)
    now = [1_800_000_000.0]
    settings = RetrainSettings(shadow=True, shadow_timeout_s=600.0, alpha=0.5, margin=-1.0)
    retrainer = Retrainer(stores, settings, clock=lambda: now[0])
    assert retrainer.handle(_request("r0", None)).kind == "promoted"  # first: no champion
    registry = ModelRegistry(stores.models_dir)

    started = retrainer.handle(_request("r1", "v0001"))  # margin -1: passes offline
    assert (started.kind, started.version) == ("shadow_started", "v0002")
    assert registry.shadow_version() == "v0002" and registry.champion_version() == "v0001"
    assert retrainer.conclude(_request("r1", "v0001"), None) is None  # still waiting
    win = GateVerdict(True, "better: live", 0.70, 0.75, 0.001)
    done = retrainer.conclude(_request("r1", "v0001"), win)
    assert done is not None and (done.kind, done.version) == ("promoted", "v0002")
    assert registry.champion_version() == "v0002" and registry.shadow_version() is None
    promoted = ModelEvents(stores.models_dir).rows()[-1]
    assert promoted["metrics"]["challenger_auc"] == 0.75

    assert retrainer.handle(_request("r2", "v0002")).kind == "shadow_started"
    lose = GateVerdict(False, "no better: live", 0.75, 0.74, 0.6)
    done = retrainer.conclude(_request("r2", "v0002"), lose)
    assert done is not None and done.kind == "rejected" and "no better" in done.reason
    assert registry.champion_version() == "v0002" and registry.shadow_version() is None

    assert retrainer.handle(_request("r3", "v0002")).kind == "shadow_started"
    now[0] += 601  # no verdict within the timeout
    done = retrainer.conclude(_request("r3", "v0002"), None)
    assert done is not None and done.kind == "rejected" and "no live verdict" in done.reason
    assert registry.shadow_version() is None
    assert verify(stores.models_dir) == []


def test_a_stale_request_is_recorded_and_rejected(stores: Stores) -> None:
    World(stores, change=False).write(T0, T0 + 10 * N * 1000)
    retrainer = Retrainer(stores)
    retrainer.handle(_request("r0", None))
    outcome = retrainer.handle(_request("r1", "v0099"))
    assert outcome.kind == "rejected" and outcome.reason.startswith("stale")
    assert _kinds(stores)[-2:] == ["triggered", "rejected"]


def test_too_few_rows_is_rejected_with_the_reason(stores: Stores) -> None:
    world = World(stores, change=False)
    world.write(T0, T0 + 30_000)  # ~30 rows
    outcome = Retrainer(stores).handle(_request("r0", None))
    assert outcome.kind == "rejected" and "not enough labelled rows" in outcome.reason
    assert ModelRegistry(stores.models_dir).champion_version() is None


def test_settings_compose_the_trainer(tmp_path: Path) -> None:
    from featflow.settings import Settings

    cfg = Settings(home=tmp_path, trainer_shadow=True, promotion_min_auc_gain=0.01).trainer
    assert cfg.retrain == replace(RetrainSettings(), shadow=True, margin=0.01)


def test_training_waits_for_labels_after_the_firing(stores: Stores) -> None:
    world = World(stores, change=False)
    world.write(T0, T0 + N * 500)
    retrainer = Retrainer(stores, RetrainSettings(min_new_labels=100))
    request = Request("r0", None, "drift", {}, event_time_ms=T0 + N * 400)
    times = world.rows.column("event_timestamp").cast("int64").to_numpy()
    expected = int(((times > T0 + N * 400) & (times < T0 + N * 500)).sum())
    assert retrainer.new_labels(T0 + N * 400) == expected > 100
    assert retrainer.needs_labels(request)
    assert not retrainer.needs_labels(replace(request, event_time_ms=None))
    retrainer.handle(request)
    assert not retrainer.needs_labels(request)  # trained: a restart does not wait again
