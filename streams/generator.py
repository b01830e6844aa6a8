"""Synthetic transaction events: heavy-tailed, reproducible, realistic enough to learn from.

User activity is Zipf-like (a few users make most events), amounts are
log-normal around a per-user typical spend, and each user mostly returns to a
few favourite merchants with an occasional new one. Event times advance by
exponential gaps; ``disorder_ms`` shuffles them a little, as real producers do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import numpy as np
import pyarrow as pa

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class GeneratedEvents:
    """Synthetic events as columns, in publication order."""

    event_id: list[str]
    user_id: np.ndarray
    merchant_id: np.ndarray
    amount: np.ndarray
    event_time_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.event_id)

    def table(
        self, *, amount: np.ndarray | None = None, event_time_ms: np.ndarray | None = None
    ) -> pa.Table:
        """The events as an events file's columns (what ``featflow backfill`` reads), with
        ``amount`` or ``event_time_ms`` replaced where given."""
        return pa.table(
            {
                "event_id": self.event_id,
                "user_id": self.user_id,
                "merchant_id": self.merchant_id,
                "amount": self.amount if amount is None else amount,
                "event_time": self.event_time_ms if event_time_ms is None else event_time_ms,
            }
        )

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs as published: key is the decimal user_id."""
        for i in range(len(self)):
            user = int(self.user_id[i])
            value = {
                "event_id": self.event_id[i],
                "user_id": user,
                "merchant_id": int(self.merchant_id[i]),
                "amount": float(self.amount[i]),
                "event_time": int(self.event_time_ms[i]),
            }
            yield str(user).encode(), _encoder.encode(value)


def generate_events(
    n: int,
    *,
    users: int,
    start_ms: int,
    mean_gap_ms: float,
    seed: int = 0,
    merchants: int = 10_000,
    disorder_ms: int = 0,
    zipf: float = 1.1,
    change_ms: int | None = None,
    amount_factor: float = 1.0,
) -> GeneratedEvents:
    """``n`` events over ``users`` users starting at ``start_ms``.

    ``zipf`` is the activity exponent: the k-th most active user's weight is ``1 / k**zipf``
    (1.1: the busiest of 100k users has ~13% of the events; 1.5: ~38%). From ``change_ms``
    on, amounts are ``amount_factor`` times larger (a covariate shift; pass the same
    ``change_ms`` to :func:`generate_outcomes` for the concept drift that goes with it).
    """
    if n < 0 or users < 1 or merchants < 1:
        raise ValueError("need n >= 0, users >= 1 and merchants >= 1")
    rng = np.random.default_rng(seed)
    # Zipf-like activity: weight of the k-th most active user ~ 1 / k^zipf.
    weights = 1.0 / np.arange(1, users + 1) ** zipf
    weights /= weights.sum()
    user_id = rng.permutation(users)[rng.choice(users, size=n, p=weights)].astype(np.int64) + 1
    typical = np.exp(rng.normal(3.0, 0.8, size=users + 1))  # per-user typical spend
    amount = np.round(typical[user_id] * rng.lognormal(0.0, 0.9, size=n), 2)
    favourites = rng.integers(1, merchants + 1, size=(users + 1, 4))
    pick_new = rng.random(n) < 0.15
    merchant_id = np.where(
        pick_new,
        rng.integers(1, merchants + 1, size=n),
        favourites[user_id, rng.integers(0, 4, size=n)],
    ).astype(np.int64)
    gaps = rng.exponential(mean_gap_ms, size=n)
    event_time_ms = start_ms + np.floor(np.cumsum(gaps)).astype(np.int64)
    if disorder_ms > 0:
        event_time_ms -= rng.integers(0, disorder_ms + 1, size=n)
    if change_ms is not None and amount_factor != 1.0:
        amount = np.where(event_time_ms >= change_ms, np.round(amount * amount_factor, 2), amount)
    event_id = [f"{seed}-{i}" for i in range(n)]
    return GeneratedEvents(event_id, user_id, merchant_id, amount.astype(np.float64), event_time_ms)


@dataclass(frozen=True, slots=True)
class GeneratedOutcomes:
    """Late labels for generated events, in publication order."""

    event_id: list[str]
    user_id: np.ndarray
    merchant_id: np.ndarray  # the event's merchant, as a chargeback names it
    label: np.ndarray  # int8, 1 = fraud
    outcome_time_ms: np.ndarray
    probability: np.ndarray  # float64: the true probability the label was drawn from

    def table(self) -> pa.Table:
        """The labels as a labels file's columns (``featflow train --labels`` reads them; the
        merchant and the time feed the merchant's label counts)."""
        return pa.table(
            {
                "event_id": self.event_id,
                "label": self.label,
                "user_id": self.user_id,
                "merchant_id": self.merchant_id,
                "outcome_time": self.outcome_time_ms,
            }
        )

    def records(self, *, with_probability: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs for the ``outcomes`` topic, keyed by user_id; with the true
        probability for a labels file (``featflow train`` then reports the ceiling AUC)."""
        for i in range(len(self.event_id)):
            user = int(self.user_id[i])
            value = {
                "event_id": self.event_id[i],
                "user_id": user,
                "merchant_id": int(self.merchant_id[i]),
                "label": int(self.label[i]),
                "outcome_time": int(self.outcome_time_ms[i]),
            }
            if with_probability:
                value["probability"] = float(self.probability[i])
            yield str(user).encode(), _encoder.encode(value)


def fraud_probability(events: GeneratedEvents, change_ms: int | None = None) -> np.ndarray:
    """The hidden ground truth: fraud is likelier for large amounts (relative to the
    user's median), at a merchant the user has not paid before, in quick bursts.

    From ``change_ms`` on the world changes (a concept drift): fraudsters learned to stay
    under the radar, so fraud comes with amounts *below* the user's median, at new merchants,
    in slower bursts (< 5 min), and a model of the old rule ranks it low. Models never see
    this function; they must learn it from the window features.
    """
    n = len(events)
    order = np.lexsort((np.arange(n), events.event_time_ms, events.user_id))
    users = events.user_id[order]
    times = events.event_time_ms[order]
    merchants = events.merchant_id[order]
    amounts = events.amount[order]
    first_of_user = np.r_[True, users[1:] != users[:-1]]
    gap_s = np.where(first_of_user, 1e6, np.diff(times, prepend=times[0]) / 1000.0)
    seen: set[tuple[int, int]] = set()
    new_merchant = np.zeros(n, dtype=bool)
    for i, pair in enumerate(zip(users.tolist(), merchants.tolist(), strict=True)):
        new_merchant[i] = pair not in seen
        seen.add(pair)
    typical = np.ones(n)
    starts = np.flatnonzero(first_of_user)
    for lo, hi in zip(starts, [*starts[1:], n], strict=True):
        typical[lo:hi] = np.median(amounts[lo:hi]) or 1.0
    logit = -5.0 + 1.6 * np.log1p(amounts / typical) + 1.2 * new_merchant + 1.5 * (gap_s < 30.0)
    if change_ms is not None:
        after = times >= change_ms
        changed = (
            -5.2 + 1.8 * np.log1p(typical / np.maximum(amounts, 0.01))
            + 1.6 * new_merchant + 1.2 * (gap_s < 300.0)
        )  # fmt: skip
        logit = np.where(after, changed, logit)
    prob = np.empty(n)
    prob[order] = 1.0 / (1.0 + np.exp(-logit))
    return prob


def generate_outcomes(
    events: GeneratedEvents,
    *,
    seed: int = 0,
    label_delay_ms: int = 3_600_000,
    change_ms: int | None = None,
) -> GeneratedOutcomes:
    """A label for every event, drawn from :func:`fraud_probability` (the world as of
    ``change_ms``, if given), arriving late."""
    rng = np.random.default_rng(seed + 1_000_003)
    truth = fraud_probability(events, change_ms)
    label = (rng.random(len(events)) < truth).astype(np.int8)
    delay = rng.integers(label_delay_ms // 2, label_delay_ms + 1, size=len(events))
    return GeneratedOutcomes(
        list(events.event_id),
        events.user_id.copy(),
        events.merchant_id.copy(),
        label,
        events.event_time_ms + delay,
        truth,
    )
