"""The retraining policy on simulated monitor snapshots: a stable stream never fires, a
covariate shift fires the drift rule, a concept drift the quality rule, within a bounded
number of snapshots; guards (minimum samples, consecutive snapshots, cooldown) hold."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from inference.reference import histogram
from monitoring.drift import DriftWindow, Reference
from monitoring.policy import HOLDOUT_SAMPLES, Policy, Rule, Trigger
from monitoring.quality import QualityWindow
from monitoring.snapshot import MetricRow, rows_of

EVERY = 1000  # predictions per snapshot (5 s at 200 predictions/s)
STEP_MS = 5000


def _draw(rng, n: int, *, shift: bool, concept: bool):
    """amount ~ lognormal (shifted: larger), score from it, labels from the score (or, after
    a concept drift, from its complement: the same features, another world)."""
    amount = rng.lognormal(3.6 if shift else 3.0, 1.0, n)
    score = 1 / (1 + np.exp(-(np.log(amount) - 3.0)))
    truth = 1 - score if concept else score
    return amount, score, (rng.random(n) < truth).astype(np.int64)


def _run(
    n_snapshots: int, change_at: int | None, kind: str, policy: Policy, seed: int = 0,
    restore_at: int | None = None,
):  # fmt: skip
    rng = np.random.default_rng(seed)
    train_amount, train_score, train_y = _draw(rng, 20_000, shift=False, concept=False)
    refs = {
        "amount": Reference.of(histogram(train_amount)),
        "score": Reference.of(histogram(train_score, np.linspace(0, 1, 21))),
    }
    baseline = {"auc": roc_auc_score(train_y, train_score), "positive_rate": train_y.mean(),
                HOLDOUT_SAMPLES: len(train_y)}  # fmt: skip
    quality, drift = QualityWindow(5000), DriftWindow(refs, 5000)
    trigger = Trigger(policy)
    fired = []
    for k in range(n_snapshots):
        if k == restore_at:  # a restarted monitor: the trigger from its checkpoint
            trigger = Trigger.restore(policy, trigger.snapshot())
        changed = change_at is not None and k >= change_at
        amount, score, y = _draw(
            rng, EVERY, shift=changed and kind == "covariate", concept=changed and kind == "concept"
        )
        quality.add_many(score, y)
        drift.add_many({"amount": amount, "score": score}, np.arange(k * EVERY, (k + 1) * EVERY))
        rows = rows_of(k * STEP_MS, "v1", quality, drift)
        got = trigger.observe(rows, "v1", baseline)
        if got is not None:
            fired.append((k, got))
    return fired


def test_a_stable_stream_never_fires() -> None:
    assert _run(400, None, "", Policy()) == []  # 400k predictions, 2,000 s of snapshots


def test_a_covariate_shift_fires_the_drift_rule_soon() -> None:
    fired = _run(80, 40, "covariate", Policy())
    k, first = fired[0]
    # within one window (5 snapshots) plus the 3 consecutive ones
    assert 40 < k <= 48, k
    assert "psi(amount)" in first.reason and first.values["psi(amount)"] > 0.25


def test_a_concept_drift_fires_the_quality_rule() -> None:
    fired = _run(80, 40, "concept", Policy())
    k, first = fired[0]
    assert 40 < k <= 48, k
    assert "psi" not in first.reason and "auc" in first.reason  # features did not move
    assert first.values["auc"] < 0.7


def test_an_auc_drop_within_the_noise_of_few_positives_does_not_breach() -> None:
    """0.06 under a holdout AUC of 0.65 is a drop on 20,000 labels, noise on 1,000 labels
    with 60 positives (standard error ~0.037); at confidence 0 the point values decide."""
    rule = Rule("auc", drop=0.05)
    baseline = {"auc": 0.65, "positive_rate": 0.06, HOLDOUT_SAMPLES: 2000.0}

    def fires(samples: int, policy: Policy) -> bool:
        rows = [MetricRow(0, "v1", "auc", None, 0.59, samples),
                MetricRow(0, "v1", "positive_rate", None, 0.06, samples)]  # fmt: skip
        trigger = Trigger(replace(policy, rules=(rule,), consecutive=1))
        return trigger.observe(rows, "v1", baseline) is not None

    assert not fires(1000, Policy())
    assert fires(1000, Policy(confidence=0.0))
    big = {**baseline, HOLDOUT_SAMPLES: 200_000.0}
    rows = [MetricRow(0, "v1", "auc", None, 0.55, 200_000),
            MetricRow(0, "v1", "positive_rate", None, 0.06, 200_000)]  # fmt: skip
    assert Trigger(replace(Policy(), rules=(rule,), consecutive=1)).observe(rows, "v1", big)
    missing = [MetricRow(0, "v1", "auc", None, 0.30, 5000)]  # no positive rate: no verdict
    assert Trigger(replace(Policy(), rules=(rule,), consecutive=1)).observe(
        missing, "v1", baseline) is None  # fmt: skip


def test_consecutive_cooldown_and_minimum_samples() -> None:
    # drift from the first snapshot: the minimum of predictions holds the first one back,
    # three in a row fire at the third snapshot with enough data, then the cooldown
    policy = Policy(rules=(Rule("psi", "*", above=0.25),), min_predictions=2000,
                    consecutive=3, cooldown_ms=60_000)  # fmt: skip
    fired = _run(60, 0, "covariate", policy)
    ks = [k for k, _ in fired]
    assert ks[0] == 3  # snapshot 1 has 2,000 predictions: snapshots 1, 2, 3 in breach
    assert all(b - a >= 12 for a, b in itertools.pairwise(ks))  # 60 s / 5 s
    assert len(ks) >= 4


def test_a_restored_trigger_continues_the_same() -> None:
    policy = Policy(consecutive=4, cooldown_ms=30_000)
    whole = _run(90, 30, "covariate", policy, seed=3)
    assert len(whole) >= 2
    for cut in (whole[0][0] - 1, whole[0][0] + 2):  # mid-streak, and inside the cooldown
        again = _run(90, 30, "covariate", policy, seed=3, restore_at=cut)
        assert [(k, f.reason, f.values) for k, f in again] == [
            (k, f.reason, f.values) for k, f in whole
        ]


def test_policy_from_settings() -> None:
    p = Policy.from_mapping(
        {"rules": [{"metric": "ece", "above": 0.1}, {"metric": "js", "feature": "*", "above": 0.2}],
         "consecutive": 2, "cooldown_s": 30, "min_labelled": 500}
    )  # fmt: skip
    assert p.rules[0].describe() == "ece > 0.1" and p.cooldown_ms == 30_000
    with pytest.raises(ValueError, match="unknown policy keys"):
        Policy.from_mapping({"treshold": 1})
    with pytest.raises(ValueError, match="exactly one of"):
        Policy.from_mapping({"rules": [{"metric": "auc", "above": 1, "below": 0}]})
    with pytest.raises(ValueError, match="unknown metric"):
        Rule("accuracy", below=0.5)
    with pytest.raises(ValueError, match="drift rules name a feature"):
        Rule("psi", above=0.2)


def test_the_readme_policy_file_is_what_settings_read(tmp_path) -> None:
    """The README's example policy, through FEATFLOW_MONITOR_POLICY as a user sets it."""
    from pathlib import Path

    from featflow.settings import Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("FEATFLOW_MONITOR_POLICY=policy.yaml", 1)[1].split("```yaml", 1)[1]
    text = "\n".join(line.strip() and line[2:] for line in block.split("```", 1)[0].splitlines())
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    policy = Settings(home=tmp_path, monitor_policy=path).monitor.policy
    assert [r.describe() for r in policy.rules] == [
        "psi(*) > 0.25", "auc < holdout - 0.05", "ece > 0.1"
    ]  # fmt: skip
    assert (policy.consecutive, policy.cooldown_ms, policy.min_labelled) == (3, 3_600_000, 1000)
    path.write_text("rules: [{metric: psi, above: 0.2}]\n")
    with pytest.raises(ValueError, match="drift rules name a feature"):
        _ = Settings(home=tmp_path, monitor_policy=path).policy
