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

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class GeneratedEvents:
    event_id: list[str]
    user_id: np.ndarray
    merchant_id: np.ndarray
    amount: np.ndarray
    event_time_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.event_id)

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
) -> GeneratedEvents:
    """``n`` events over ``users`` users starting at ``start_ms``."""
    if n < 0 or users < 1 or merchants < 1:
        raise ValueError("need n >= 0, users >= 1 and merchants >= 1")
    rng = np.random.default_rng(seed)
    # Zipf-like activity: weight of the k-th most active user ~ 1 / k^1.1.
    weights = 1.0 / np.arange(1, users + 1) ** 1.1
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
    event_id = [f"{seed}-{i}" for i in range(n)]
    return GeneratedEvents(event_id, user_id, merchant_id, amount.astype(np.float64), event_time_ms)
