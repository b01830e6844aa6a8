"""The generator's change point: a covariate shift in amounts and a concept drift in the
fraud rule from ``change_ms`` on, nothing changed before it."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from streams.generator import fraud_probability, generate_events, generate_outcomes

T0 = 1_767_225_600_000
N = 30_000


def _events(**change: object):
    return generate_events(N, users=600, start_ms=T0, mean_gap_ms=2000, seed=9, **change)


def test_nothing_changes_before_the_change_point() -> None:
    plain = _events()
    change = T0 + N * 1000  # about half way
    shifted = _events(change_ms=change, amount_factor=1.6)
    before = plain.event_time_ms < change
    assert np.array_equal(plain.event_time_ms, shifted.event_time_ms)
    assert np.array_equal(plain.amount[before], shifted.amount[before])
    np.testing.assert_allclose(shifted.amount[~before], np.round(plain.amount[~before] * 1.6, 2))
    late = generate_outcomes(plain, seed=9, change_ms=change)
    never = generate_outcomes(plain, seed=9)
    assert np.array_equal(late.label[before], never.label[before])
    beyond = generate_outcomes(plain, seed=9, change_ms=T0 + 10 * N * 2000)
    assert np.array_equal(beyond.label, never.label)


def test_the_concept_drift_defeats_the_old_rule_not_the_new_one() -> None:
    change = T0 + N * 1000
    events = _events(change_ms=change, amount_factor=1.6)
    labels = generate_outcomes(events, seed=9, change_ms=change).label
    after = events.event_time_ms >= change
    truth = fraud_probability(events, change)
    old = fraud_probability(events)
    ceiling = roc_auc_score(labels[after], truth[after])
    stale = roc_auc_score(labels[after], old[after])
    assert ceiling > 0.72 and stale < 0.55, (ceiling, stale)
    assert abs(labels[after].mean() - labels[~after].mean()) < 0.03  # the base rate holds
