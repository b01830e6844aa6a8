"""Shadow comparison: champion and shadow paired by event, judged on the same events."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from monitoring.join import Joined
from monitoring.shadow import ShadowWindow


def _pair(event: str, version: str, role: str, score: float, label: int) -> Joined:
    return Joined(f"{event}-{role}", version, score, label, 0, 0, event, role)


def _feed(window: ShadowWindow, rng: np.random.Generator, n: int, shuffle: bool = True):
    labels = rng.integers(0, 2, n)
    champion = np.round(rng.random(n) * 0.6 + labels * 0.2, 2)  # ties on purpose
    shadow = np.round(rng.random(n) * 0.5 + labels * 0.4, 2)
    joined = [_pair(f"e{i}", "v1", "champion", champion[i], labels[i]) for i in range(n)]
    joined += [_pair(f"e{i}", "v2", "shadow", shadow[i], labels[i]) for i in range(n)]
    order = rng.permutation(len(joined)) if shuffle else np.arange(len(joined))
    for k in order:
        window.add(joined[k])
    return labels, champion, shadow


def test_rows_equal_scikit_learn_on_the_paired_events() -> None:
    rng = np.random.default_rng(3)
    window = ShadowWindow(size=10_000)
    labels, champion, shadow = _feed(window, rng, 3000)
    rows = {r.metric: r for r in window.rows(123)}
    assert {r.model_version for r in rows.values()} == {"v2"}
    assert {r.feature for r in rows.values()} == {"v1"}
    assert rows["shadow_auc"].samples == 3000
    assert rows["shadow_auc"].value == pytest.approx(roc_auc_score(labels, shadow), abs=1e-12)
    assert rows["shadow_champion_auc"].value == pytest.approx(
        roc_auc_score(labels, champion), abs=1e-12
    )
    gain = roc_auc_score(labels, shadow) - roc_auc_score(labels, champion)
    assert rows["shadow_auc_gain"].value == pytest.approx(gain, abs=1e-12)
    # the standard error against a paired bootstrap of the difference (independent method)
    diffs = []
    for _ in range(300):
        k = rng.integers(0, len(labels), len(labels))
        diffs.append(roc_auc_score(labels[k], shadow[k]) - roc_auc_score(labels[k], champion[k]))
    assert rows["shadow_auc_gain_se"].value == pytest.approx(np.std(diffs), rel=0.15)


def test_only_complete_pairs_count_and_the_window_keeps_the_latest() -> None:
    idle = ShadowWindow(size=4)
    idle.add(_pair("e0", "v1", "champion", 0.1, 1))
    assert not idle.active and len(idle._halves) == 0  # no shadow seen: nothing kept
    window = ShadowWindow(size=4)
    window.active = True  # the core saw a shadow prediction
    for i in range(6):
        window.add(_pair(f"e{i}", "v1", "champion", 0.1 * i, i % 2))
    assert window.rows(0) == []  # no shadow yet: nothing paired
    for i in range(6):
        window.add(_pair(f"e{i}", "v2", "shadow", 0.9 - 0.1 * i, i % 2))
    (pairs,) = window.pairs.values()
    assert [p[1] for p in pairs] == pytest.approx([0.2, 0.3, 0.4, 0.5])  # e2..e5
    window.add(Joined("x", "v2", 0.5, 1, 0, 0, None, "shadow"))  # no event id: unpaired
    assert len(pairs) == 4
    rows = {r.metric: r.value for r in window.rows(0)}
    # e2..e5: labels 0 1 0 1; champion 0.2 0.3 0.4 0.5 (3 of 4 pairs ordered right),
    # shadow 0.7 0.6 0.5 0.4 (1 of 4)
    assert rows["shadow_champion_auc"] == 0.75 and rows["shadow_auc"] == 0.25


def test_one_class_gives_no_verdict() -> None:
    window = ShadowWindow(size=100)
    for i in range(50):
        window.add(_pair(f"e{i}", "v1", "champion", 0.3, 0))
        window.add(_pair(f"e{i}", "v2", "shadow", 0.4, 0))
    assert window.rows(0) == []


def test_snapshot_restore_continues_exactly() -> None:
    first, straight = ShadowWindow(size=500), ShadowWindow(size=500)
    for w in (first, straight):  # the same records into both, ending with half pairs
        _feed(w, np.random.default_rng(5), 400)
        for i in range(20):
            w.add(_pair(f"h{i}", "v1", "champion", i / 20, i % 2))
    restored = ShadowWindow.restore(first.snapshot())
    for w in (straight, restored):  # the halves complete after the restore
        for i in range(20):
            w.add(_pair(f"h{i}", "v2", "shadow", 1 - i / 20, i % 2))
    assert len(straight.pairs[("v1", "v2")]) == 420
    assert straight.rows(1) == restored.rows(1) != []


def test_the_monitor_core_pairs_roles_from_predictions_and_outcomes() -> None:
    from infra.predictions import Prediction
    from monitoring.core import ModelBook, MonitorCore
    from monitoring.join import Label

    book = ModelBook(lambda v: None, lambda v: {}, lambda: "v1")
    core = MonitorCore(book, window_labels=1000)
    rng = np.random.default_rng(8)
    n = 600
    labels = rng.integers(0, 2, n)
    old, new = rng.random(n), np.clip(rng.random(n) * 0.7 + labels * 0.3, 0, 1)
    t0 = 1_767_225_600_000
    preds = [Prediction(f"c{i}", 1, float(old[i]), "v1", f"e{i}", t0 + i) for i in range(n)]
    preds += [
        Prediction(f"s{i}", 1, float(new[i]), "v2", f"e{i}", t0 + i, role="shadow")
        for i in range(n)
    ]
    core.add_predictions(preds[::2] + preds[1::2])
    core.add_outcomes([Label(f"e{i}", None, int(labels[i]), t0 + i + 5) for i in range(n)])
    rows, _ = core.snapshot(t0 + 10_000)
    shadow = {r.metric: r for r in rows if r.metric.startswith("shadow_")}
    assert shadow["shadow_auc"].value == pytest.approx(roc_auc_score(labels, new), abs=1e-12)
    assert shadow["shadow_champion_auc"].value == pytest.approx(roc_auc_score(labels, old))
    assert shadow["shadow_auc"].samples == n
    restored = MonitorCore(book, window_labels=1000)
    restored.restore(core.state())
    again = [r for r in restored.snapshot(t0 + 10_000)[0] if r.metric.startswith("shadow_")]
    assert again == list(shadow.values())
