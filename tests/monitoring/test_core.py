"""MonitorCore: quality per version equal to scikit-learn on the joined pairs, drift counts
equal to a recount, data-quality rows, a trigger through the core, restore at any point
equal to an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from inference.reference import histogram
from infra.predictions import Prediction
from monitoring.core import ALL_VERSIONS, ModelBook, MonitorCore
from monitoring.drift import Reference
from monitoring.join import Label
from monitoring.policy import Policy, Rule

T0 = 1_767_225_600_000


def _book(champion: str | None = "v1") -> ModelBook:
    rng = np.random.default_rng(0)
    refs = {
        "amount": Reference.of(histogram(rng.lognormal(3, 1, 20_000))),
        "score": Reference.of(histogram(rng.random(20_000), np.linspace(0, 1, 21))),
    }
    return ModelBook(
        references=lambda v: refs if v == "v1" else None,  # v2: unknown to the registry
        holdout=lambda v: {"auc": 0.75},
        champion=lambda: champion,
    )


def _records(seed: int, n: int = 4000, shift: bool = False):
    rng = np.random.default_rng(seed)
    preds, outs = [], []
    for i in range(n):
        t = T0 + i * 100
        amount = float(rng.lognormal(3.6 if shift else 3.0, 1.0))
        for version in ("v1", "v2") if i % 3 == 0 else ("v1",):
            score = float(rng.random())
            preds.append(
                Prediction(
                    f"p{i}{version}",
                    i % 50,
                    score,
                    version,
                    event_id=f"e{i}",
                    event_time=t,
                    features={"amount": amount},
                    features_found=bool(rng.random() > 0.02),
                )
            )
        if rng.random() < 0.85:
            by_id = rng.random() < 0.5
            pid = f"p{i}v1" if by_id else None
            outs.append(
                Label(f"e{i}", pid, int(rng.random() < 0.3), t + int(rng.integers(0, 5000)))
            )
    arrivals = [("p", p, p.time_ms) for p in preds] + [("o", o, o.time_ms) for o in outs]
    arrivals.sort(key=lambda a: a[2])  # outcomes come a little after their predictions
    return arrivals, preds, outs


def _feed(core: MonitorCore, arrivals, batch: int = 97) -> None:
    for lo in range(0, len(arrivals), batch):
        part = arrivals[lo : lo + batch]
        core.add_predictions([r for k, r, _ in part if k == "p"])
        core.add_outcomes([r for k, r, _ in part if k == "o"])


def _value(rows, version, metric, feature=None):
    (row,) = [
        r for r in rows if (r.model_version, r.metric, r.feature) == (version, metric, feature)
    ]
    return row


def test_quality_drift_and_data_quality_rows() -> None:
    arrivals, preds, outs = _records(1)
    core = MonitorCore(_book(), horizon_ms=10**12, window_labels=10**6, window_events=10**6)
    _feed(core, arrivals)
    rows, fired = core.snapshot(T0 + 10**9)
    p = pd.DataFrame([(x.prediction_id, x.event_id, x.model_version, x.score) for x in preds],
                     columns=["pid", "eid", "version", "score"])  # fmt: skip
    o = pd.DataFrame(
        [(x.prediction_id, x.event_id, x.label) for x in outs], columns=["pid", "eid", "label"]
    )
    joined = pd.concat([p.merge(o.dropna(subset=["pid"])[["pid", "label"]], on="pid"),
                        p.merge(o[o["pid"].isna()][["eid", "label"]], on="eid")])  # fmt: skip
    for version in ("v1", "v2"):
        mine = joined[joined["version"] == version]
        auc = _value(rows, version, "auc")
        assert auc.samples == len(mine)
        assert auc.value == pytest.approx(roc_auc_score(mine["label"], mine["score"]), abs=1e-9)
        got = _value(rows, version, "log_loss").value
        assert got == pytest.approx(log_loss(mine["label"], mine["score"]), abs=1e-9)
        seen = int((p["version"] == version).sum())
        assert _value(rows, version, "predictions").value == seen
        missing = sum(1 for x in preds if x.model_version == version and not x.features_found)
        assert _value(rows, version, "features_missing").value == pytest.approx(missing / seen)
    # drift only where the registry has reference bins (v1), over found predictions
    found = [x for x in preds if x.model_version == "v1" and x.features_found]
    ref = core.drift["v1"].references["amount"]
    recount = np.bincount(ref.bin_of(np.array([x.features["amount"] for x in found])),
                          minlength=ref.n_bins)  # fmt: skip
    assert np.array_equal(core.drift["v1"].counts("amount"), recount)
    assert _value(rows, "v1", "psi", "amount").samples == len(found)
    assert not [r for r in rows if r.model_version == "v2" and r.metric == "psi"]
    assert fired is None  # no shift
    completeness = [r for r in rows if r.metric == "label_completeness"]
    assert completeness and all(0 <= r.value <= 1 for r in completeness)
    assert _value(rows, ALL_VERSIONS, "duplicate_records").value == 0
    newest = max(x.time_ms for x in preds)
    assert _value(rows, ALL_VERSIONS, "freshness_s").value == (T0 + 10**9 - newest) / 1000
    # the interval counters restart after a snapshot
    rows2, _ = core.snapshot(T0 + 10**9 + 5000)
    assert _value(rows2, "v1", "predictions").value == 0


def test_label_completeness_by_age() -> None:
    core = MonitorCore(_book(), horizon_ms=10**12)
    now = T0 + 7_200_000
    mk = lambda i, t: Prediction(f"p{i}", 1, 0.5, "v1", event_id=f"e{i}", event_time=t)  # noqa: E731
    core.add_predictions([mk(0, now - 30_000), mk(1, now - 40_000), mk(2, now - 5_400_000),
                          mk(3, now - 4_000_000), mk(4, now)])  # fmt: skip
    core.add_outcomes(
        [Label("e1", None, 1, now), Label("e2", None, 0, now), Label("e3", "p3", 1, now)]
    )
    rows, _ = core.snapshot(now)
    bands = {r.feature: (r.value, r.samples) for r in rows if r.metric == "label_completeness"}
    assert bands == {"<1m": (1 / 3, 3), "1h-6h": (1.0, 2)}


def test_a_covariate_shift_fires_through_the_core() -> None:
    policy = Policy(rules=(Rule("psi", "*", above=0.25),), min_predictions=1000, consecutive=2)
    core = MonitorCore(_book(), window_events=2000, policy=policy)
    stable, _, _ = _records(2, n=3000)
    _feed(core, stable)
    assert core.snapshot(T0 + 300_000)[1] is None
    shifted, _, _ = _records(3, n=3000, shift=True)
    _feed(core, [(k, r, t) for k, r, t in shifted])
    assert core.snapshot(T0 + 305_000)[1] is None  # one snapshot in breach
    fired = core.snapshot(T0 + 310_000)[1]
    assert fired is not None and "psi(amount)" in fired.reason


@pytest.mark.parametrize("cut", [0.0, 0.3, 0.77, 1.0])
def test_restore_equals_an_uninterrupted_run(cut: float) -> None:
    arrivals, _, _ = _records(4, n=3000)
    settings = dict(horizon_ms=60_000, window_labels=800, window_events=700)
    whole = MonitorCore(_book(), **settings)
    _feed(whole, arrivals)
    k = int(cut * len(arrivals))
    first = MonitorCore(_book(), **settings)
    _feed(first, arrivals[:k])
    second = MonitorCore(_book(), **settings)
    second.restore(first.state())
    _feed(second, arrivals[k:])
    assert second.state() == whole.state()
    assert second.snapshot(T0 + 10**9)[0] == whole.snapshot(T0 + 10**9)[0]
