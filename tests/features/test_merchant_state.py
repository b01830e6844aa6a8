"""The merchant views' state against the arrival-order oracle, on heavy-tailed merchants.

Rows reach a merchant partition from many user partitions (interleaved, out of order) and
from the labels (in any ``outcome_time`` order, some long after); second copies come back
when a user partition replays. The state must equal the oracle (``testing/oracle.py``, no
kernel code) fed each view's rows in arrival order, skip every second copy, and survive a
snapshot and restore anywhere.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from features.merchant_state import MerchantState
from features.spec import DAY_MS, HOUR_MS, MINUTE_MS
from features.views import MERCHANT_ACTIVITY, MERCHANT_OUTCOMES
from infra.merchant_rows import EVENTS, OUTCOMES, MerchantRows, decode
from testing.oracle import Stream, bruteforce_oracle_np


def _rows(seed: int, n: int = 6000) -> MerchantRows:
    """Transactions and labels at Zipf(1.6) merchants, as a merchant partition receives them.

    Events of four user partitions, each partition's rows in its offset order, whose event
    times run up to 20 minutes behind one another (a lagging partition), a few over a day
    late (beyond the activity view's lateness); labels 30 min to 9 days after their event,
    arriving among the events in event order (so out of ``outcome_time`` order), with ties.
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, 41) ** 1.6
    merchants = rng.choice(40, size=n, p=weights / weights.sum()).astype(np.int64) * 7 + 3
    users = rng.integers(0, 300, n).astype(np.int64)
    times = 1_767_000_000_000 + np.cumsum(rng.exponential(20_000.0, n)).astype(np.int64)
    source_partition = rng.integers(0, 4, n).astype(np.int32)
    times -= source_partition * rng.integers(0, 5 * MINUTE_MS)  # partitions lag each other
    times[rng.random(n) < 0.01] -= 25 * HOUR_MS  # beyond the activity view's 24 h lateness
    times[rng.random(n) < 0.05] //= MINUTE_MS  # ties on the minute
    times[times < 10**12] *= MINUTE_MS
    amounts = np.round(rng.lognormal(3.0, 1.0, n), 2)
    source_offset = np.zeros(n, dtype=np.int64)
    for p in range(4):
        mine = source_partition == p
        source_offset[mine] = np.arange(mine.sum())
    events = MerchantRows(
        np.full(n, EVENTS, np.int8), source_partition, source_offset,
        merchants, users, times, amounts, pa.array([f"e{i}" for i in range(n)]),
    )  # fmt: skip
    labelled = np.flatnonzero(rng.random(n) < 0.6)
    delay = rng.choice([30 * MINUTE_MS, HOUR_MS, DAY_MS, 9 * DAY_MS], size=len(labelled))
    label_times = times[labelled] + delay
    label_times[::17] = label_times[::17] // MINUTE_MS * MINUTE_MS  # ties
    labels = MerchantRows(
        np.full(len(labelled), OUTCOMES, np.int8),
        np.zeros(len(labelled), np.int32),
        np.arange(len(labelled), dtype=np.int64),
        merchants[labelled], users[labelled], label_times,
        (rng.random(len(labelled)) < 0.2).astype(np.float64),
        pa.array([f"e{i}" for i in labelled]),
    )  # fmt: skip
    # labels arrive among the events, in their own offset order, each after its event
    position = np.r_[np.arange(n), np.sort(labelled + rng.uniform(0, n - labelled))]
    mixed = MerchantRows.concat([events, labels])
    return mixed.take(np.argsort(position, kind="stable"))


def _oracle(rows: MerchantRows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(activity features, activity late, outcome features, outcome late), arrival order."""
    ev = rows.take(rows.source == EVENTS)
    lab = rows.take(rows.source == OUTCOMES)
    act, act_late = bruteforce_oracle_np(
        Stream(ev.merchant_id, ev.time_ms, ev.value, ev.user_id),
        MERCHANT_ACTIVITY.specs,
        MERCHANT_ACTIVITY.lateness_ms,
    )
    out, out_late = bruteforce_oracle_np(
        Stream(lab.merchant_id, lab.time_ms, lab.value, np.zeros(len(lab), np.int64)),
        MERCHANT_OUTCOMES.specs,
        MERCHANT_OUTCOMES.lateness_ms,
    )
    return act, act_late, out, out_late


def _run(rows: MerchantRows, seed: int, *, replays: bool, restore: bool):
    """Feed ``rows`` in random batches (second copies of some, a restore midway); return
    each view's accepted (event id -> features) in arrival order, and replays skipped."""
    rng = np.random.default_rng(seed)
    state = MerchantState()
    got = {"activity": {}, "outcomes": {}}
    skipped = 0
    cuts = np.sort(rng.choice(np.arange(1, len(rows)), size=40, replace=False))
    bounds = [0, *cuts.tolist(), len(rows)]
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        batch = rows.take(np.arange(lo, hi))
        if replays and i % 5 == 4:
            # a user partition restored from an older checkpoint sends earlier rows again
            back = max(0, lo - int(rng.integers(1, 300)))
            batch = MerchantRows.concat([rows.take(np.arange(back, lo)), batch])
        if restore and i == 20:
            state = MerchantState.restore(decode_roundtrip(state))
        update = state.update(batch)
        skipped += update.replays
        for name, part, applied in (
            ("activity", update.activity_rows, update.activity),
            ("outcomes", update.outcome_rows, update.outcomes),
        ):
            ids = part.event_id.to_pylist()
            source = part.source_offset
            for j, row in enumerate(applied.rows.tolist()):
                got[name][(ids[row], int(source[row]))] = applied.features[j]
    return got, skipped


def decode_roundtrip(state: MerchantState) -> bytes:
    """A snapshot that went through bytes (as a checkpoint file does)."""
    return bytes(state.snapshot())


@pytest.mark.parametrize("seed", [0, 1])
def test_merchant_views_match_the_arrival_order_oracle(seed: int) -> None:
    rows = _rows(seed)
    act, act_late, out, out_late = _oracle(rows)
    assert act_late.sum() > 10 and out_late.sum() > 10  # the case is real
    assert len(np.unique(rows.merchant_id)) > 20
    got, skipped = _run(rows, seed, replays=True, restore=True)
    assert skipped > 100

    ev = rows.take(rows.source == EVENTS)
    lab = rows.take(rows.source == OUTCOMES)
    for name, part, expected, late in (
        ("activity", ev, act, act_late),
        ("outcomes", lab, out, out_late),
    ):
        keys = list(zip(part.event_id.to_pylist(), part.source_offset.tolist(), strict=True))
        accepted = [k for k, is_late in zip(keys, late.tolist(), strict=True) if not is_late]
        assert sorted(got[name]) == sorted(accepted), name  # each row once, the late ones none
        values = np.array([got[name][k] for k in accepted])
        np.testing.assert_allclose(values, expected[~late], rtol=1e-12, err_msg=name)


def test_a_label_counts_only_from_its_outcome_time() -> None:
    """Independent of the oracle: a merchant_outcomes row at time t counts exactly the labels
    already received whose outcome_time is in (t - 7 days, t], never one from after t."""
    rows = _rows(5)
    state = MerchantState()
    update = state.update(rows)
    lab = update.outcome_rows
    applied = update.outcomes
    names = [s.name for s in MERCHANT_OUTCOMES.specs]
    count, frauds = names.index("merchant_labels_7d"), names.index("merchant_frauds_7d")
    times, merchants, values = lab.time_ms, lab.merchant_id, lab.value
    accepted = set(applied.rows.tolist())
    for j, row in enumerate(applied.rows.tolist()):
        t = times[row]
        before = np.array([r in accepted for r in range(row + 1)])
        seen = np.flatnonzero(before & (merchants[: row + 1] == merchants[row]))
        inside = seen[(times[seen] > t - 7 * DAY_MS) & (times[seen] <= t)]
        assert applied.features[j, count] == len(inside)
        assert applied.features[j, frauds] == values[inside].sum()
        future = seen[times[seen] > t]
        assert not set(future) & set(inside)


def test_a_record_featflow_did_not_write_is_a_dead_letter() -> None:
    from streams.merchant_processor import MerchantProcessor

    class Rec:
        def __init__(self, offset: int, value: bytes | None):
            self.offset, self.value, self.key = offset, value, None

    rows = _rows(2, n=200)
    good = rows.encode()
    proc = MerchantProcessor(topic="merchant_rows", partition=0)
    effects = proc.process([Rec(0, b"{}"), Rec(1, good[:50]), Rec(2, None), Rec(3, good)])
    assert [d.offset for d in effects.dead_letters] == [0, 1, 2]
    assert all(d.reason.value == "schema" for d in effects.dead_letters)
    assert proc.offset == 3
    assert effects.counts.applied["merchant_activity"] > 100
    assert len(decode(good)) == len(rows)
