"""The prediction/outcome join against a pandas merge, expiry at the horizon, duplicates,
bounded state, and snapshot/restore at any point equal to an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitoring.join import Joined, Label, PredictionJoin, Scored


def _scenario(seed: int, n_events: int = 3000, spread_ms: int = 0):
    """Arrival-ordered records: 1-2 predictions per event (champion, shadow), an outcome for
    80 % of events naming one prediction or only the event, 5 % of outcomes and 3 % of
    predictions sent twice, outcomes often before their predictions."""
    rng = np.random.default_rng(seed)
    preds, outs = [], []
    for e in range(n_events):
        t = e * 10
        eid = f"e{e}"
        mine = [Scored(f"p{e}-c", eid, "v1", float(rng.random()), t)]
        if rng.random() < 0.5:
            mine.append(Scored(f"p{e}-s", eid, "v2", float(rng.random()), t))
        preds += mine
        if rng.random() < 0.8:
            label = int(rng.random() < 0.3)
            by_id = rng.random() < 0.5
            pid = mine[int(rng.integers(len(mine)))].prediction_id if by_id else None
            outs.append(Label(eid, pid, label, t + int(rng.integers(0, spread_ms + 1))))
    preds += [p for p in preds if rng.random() < 0.03]
    outs += [o for o in outs if rng.random() < 0.05]
    records = [("p", p) for p in preds] + [("o", o) for o in outs]
    order = rng.permutation(len(records))
    return [records[i] for i in order], preds, outs


def _feed(join: PredictionJoin, records) -> list[Joined]:
    out: list[Joined] = []
    for kind, r in records:
        out += join.add_prediction(r) if kind == "p" else join.add_outcome(r)
    return out


def _oracle(preds: list[Scored], outs: list[Label]) -> pd.DataFrame:
    p = pd.DataFrame([(x.prediction_id, x.event_id) for x in preds], columns=["pid", "eid"])
    p = p.drop_duplicates("pid")
    o = pd.DataFrame([(x.prediction_id, x.event_id, x.label) for x in outs],
                     columns=["pid", "eid", "label"]).drop_duplicates()  # fmt: skip
    by_id = p.merge(o.dropna(subset=["pid"])[["pid", "label"]], on="pid")
    by_event = p.merge(o[o["pid"].isna()][["eid", "label"]], on="eid")
    return pd.concat([by_id, by_event])[["pid", "label"]].sort_values("pid").reset_index(drop=True)


@pytest.mark.parametrize("seed", range(4))
def test_equals_a_pandas_merge_in_any_arrival_order(seed: int) -> None:
    records, preds, outs = _scenario(seed)
    join = PredictionJoin(horizon_ms=10**12)  # nothing expires
    got = _feed(join, records)
    frame = pd.DataFrame([(j.prediction_id, j.label) for j in got], columns=["pid", "label"])
    assert frame["pid"].is_unique, "a prediction joined twice"
    want = _oracle(preds, outs)
    pd.testing.assert_frame_equal(frame.sort_values("pid").reset_index(drop=True), want)
    n_unique_preds = len({p.prediction_id for p in preds})
    assert join.counts.duplicate_predictions == len(preds) - n_unique_preds
    assert join.counts.duplicate_outcomes == len(outs) - len(set(outs))
    by_pid = {p.prediction_id: p for p in preds}
    for j in got:
        assert (j.model_version, j.score) == (by_pid[j.prediction_id].model_version,
                                              by_pid[j.prediction_id].score)  # fmt: skip


def test_expiry_at_the_horizon() -> None:
    join = PredictionJoin(horizon_ms=100)
    assert join.add_prediction(Scored("a", "ea", "v1", 0.5, 0)) == []
    assert join.add_prediction(Scored("b", "eb", "v2", 0.5, 100)) == []
    join.add_outcome(Label("ex", None, 1, 100))  # the watermark reaches 100: a stays (cutoff 0)
    assert join.counts.expired_predictions == {}
    join.add_outcome(Label("ey", None, 1, 101))  # cutoff 1: a leaves, never labelled
    assert join.counts.expired_predictions == {"v1": 1}
    assert join.add_outcome(Label("ea", "a", 1, 102)) == []  # too late: waits as an outcome
    pairs = join.add_outcome(Label("eb", None, 0, 150))
    assert [(p.prediction_id, p.label) for p in pairs] == [("b", 0)]
    join.add_prediction(Scored("z", "ez", "v1", 0.1, 400))  # everything before 300 leaves
    assert join.counts.unmatched_outcomes == 3  # ex, ey and the late label of a; eb matched
    assert join.counts.expired_predictions == {"v1": 1}
    assert len(join) == 1  # only z waits


def test_state_stays_bounded_over_a_long_stream() -> None:
    rng = np.random.default_rng(2)
    join = PredictionJoin(horizon_ms=1000)
    peak = 0
    for i in range(50_000):
        t = i * 10  # 100 records per horizon
        join.add_prediction(Scored(f"p{i}", f"e{i}", "v1", 0.5, t))
        if rng.random() < 0.5:
            join.add_outcome(Label(f"e{i - int(rng.integers(0, 150))}", None, 1, t))
        peak = max(peak, len(join))
    assert peak < 500, peak
    expired = join.counts.expired_predictions["v1"]
    assert 10_000 < expired < 40_000  # about half never get a label in time


@pytest.mark.parametrize("cut", [0.0, 0.37, 0.8, 1.0])
def test_snapshot_restore_equals_an_uninterrupted_run(cut: float) -> None:
    records, _, _ = _scenario(7, n_events=2000, spread_ms=400)
    whole = PredictionJoin(horizon_ms=500)
    want = _feed(whole, records)
    k = int(cut * len(records))
    first = PredictionJoin(horizon_ms=500)
    got = _feed(first, records[:k])
    restored = PredictionJoin.restore(first.snapshot())
    got += _feed(restored, records[k:])
    assert got == want
    assert restored.counts == whole.counts
    assert restored.snapshot() == whole.snapshot()
    assert sum(whole.counts.expired_predictions.values()) > 0  # the horizon did bite
