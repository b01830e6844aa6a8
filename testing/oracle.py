"""Independent reference implementations for the window features (no kernel code used).

* :func:`pandas_oracle`: pandas groupby + time-based ``rolling``/``ewm`` for in-order streams.
* :func:`bruteforce_oracle`: O(n * events-per-user) direct transcription of the arrival-order
  semantics in ``features.kernels`` (per-entity lateness, out-of-order exclusion);
  :func:`bruteforce_oracle_np` is the same transcription on numpy arrays, fast enough for
  users with thousands of events, one reference per aggregation (:data:`REFERENCES`).
* :func:`make_stream`: synthetic streams with ties, bursts and >24h silences;
  :func:`make_hot_stream`: a few users with tens of thousands of events in one day;
  :func:`make_shuffled_hot_stream`: dense users on a coarse time grid, shuffled within a
  few seconds of arrival (out-of-order rows of long histories, short windows).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.spec import DAY_MS, HOUR_MS, MINUTE_MS, FeatureSpec

DERIVED = ("ratio", "difference", "below", "equals")


@dataclass(frozen=True)
class History:
    """One entity's accepted events in arrival order, the current one last."""

    t: np.ndarray  # int64 ms
    a: np.ndarray  # float64 amounts
    m: np.ndarray  # int64 merchants
    tmax: int  # the entity's max accepted time, this event included

    def window(self, w: int) -> np.ndarray:
        """Rows in the current event's window (t - w, t]: earlier-arrived rows only."""
        t = self.t[-1]
        return (self.t > t - w) & (self.t <= t)


def _since_last(h: History, _: FeatureSpec) -> float:
    prev = h.t[:-1][h.t[:-1] <= h.t[-1]]
    return (h.t[-1] - prev.max()) / 1000.0 if prev.size else -1.0


def _ewm_mean(h: History, s: FeatureSpec) -> float:
    w = 0.5 ** ((h.tmax - h.t) / s.window_ms)
    return float((w * h.a).sum() / w.sum())


def _first(h: History, s: FeatureSpec) -> float:
    inside = h.window(s.window_ms)
    t = np.where(inside, h.t, np.iinfo(np.int64).max)
    return float(h.a[np.argmin(t)])  # earliest time; argmin takes the earliest arrival


# The quantile definition (features/kernels/quantile.py's docstring) written again: the
# nearest-rank order statistic, reported as its log bucket's representative.
Q_MIN, Q_MAX, Q_BUCKETS = 0.01, 1e12, 1024


def nearest_rank(values: np.ndarray, percentile: int) -> float:
    """The exact nearest-rank percentile: the k-th smallest, k = ceil(p * n / 100)."""
    k = -(-percentile * values.shape[0] // 100)
    return float(np.sort(values)[max(k, 1) - 1])


def bucketed(value: float) -> float:
    """``value`` as the representative of its quantile bucket."""
    if value < Q_MIN:
        return 0.0
    log_g = (np.log(Q_MAX) - np.log(Q_MIN)) / (Q_BUCKETS - 1)
    b = min(Q_BUCKETS - 1, 1 + int(np.floor((np.log(value) - np.log(Q_MIN)) / log_g)))
    g = np.exp(log_g)
    return float(np.exp(np.log(Q_MIN) + (b - 1) * log_g) * 2 * g / (1 + g))


def _quantile(h: History, s: FeatureSpec) -> float:
    return bucketed(nearest_rank(h.a[h.window(s.window_ms)], s.percentile))


def _count_same(h: History, s: FeatureSpec) -> float:
    return float((h.m[h.window(s.window_ms)] == h.m[-1]).sum())


def _last(h: History, s: FeatureSpec) -> float:
    return float(h.a[-1] if s.column == "amount" else h.m[-1])


# One reference per aggregation (numbagg's COMPARISONS): the definition written with numpy
# over the entity's history and the spec. It drives :func:`bruteforce_oracle_np` and
# test_kernels::test_each_aggregation_matches_its_reference. Derived features are functions
# of the row (:func:`derived_reference`), not of the history: None here.
REFERENCES: dict[str, Callable[[History, FeatureSpec], float] | None] = {
    "count": lambda h, s: float(h.window(s.window_ms).sum()),
    "sum": lambda h, s: float(np.sum(h.a[h.window(s.window_ms)])),
    "mean": lambda h, s: float(np.mean(h.a[h.window(s.window_ms)])),
    "std": lambda h, s: float(np.std(h.a[h.window(s.window_ms)], ddof=0)),
    "max": lambda h, s: float(np.max(h.a[h.window(s.window_ms)])),
    "min": lambda h, s: float(np.min(h.a[h.window(s.window_ms)])),
    "distinct": lambda h, s: float(np.unique(h.m[h.window(s.window_ms)]).shape[0]),
    "first": _first,
    "quantile": _quantile,
    "count_same": _count_same,
    "since_last": _since_last,
    "ewm_mean": _ewm_mean,
    "last": _last,
    "ratio": None,
    "difference": None,
    "below": None,
    "equals": None,
}


def derived_reference(out: np.ndarray, specs: Sequence[FeatureSpec]) -> None:
    """Fill the derived columns of an oracle's ``out`` from its other columns, in place,
    with pandas (the definitions of features/derived.py written again)."""
    frame = pd.DataFrame(out, columns=[s.name for s in specs])
    for j, s in enumerate(specs):
        if s.agg == "ratio":
            a, b = frame[s.inputs[0]], frame[s.inputs[1]]
            col = (a / b.replace(0.0, np.nan)).where(b != 0.0, 0.0).where(a.notna())
        elif s.agg == "difference":
            col = frame[s.inputs[0]] - frame[s.inputs[1]]
        elif s.agg == "below":
            a = frame[s.inputs[0]]
            col = (a < s.threshold).astype(float).where(a.notna())
        elif s.agg == "equals":
            a = frame[s.inputs[0]]
            col = (a == s.threshold).astype(float).where(a.notna())
        else:
            continue
        out[:, j] = col.to_numpy(np.float64)


@dataclass(frozen=True)
class Stream:
    """Events in arrival order."""

    users: np.ndarray  # int64
    times: np.ndarray  # int64 ms
    amounts: np.ndarray  # float64
    merchants: np.ndarray  # int64

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def slice(self, lo: int, hi: int) -> Stream:
        """Events ``lo`` to ``hi`` (arrival order), as a stream of their own."""
        return Stream(
            self.users[lo:hi], self.times[lo:hi], self.amounts[lo:hi], self.merchants[lo:hi]
        )


def make_stream(
    seed: int,
    *,
    n_users: int = 30,
    n_events: int = 1500,
    disorder: float = 0.0,
    max_delay_ms: int = 20 * MINUTE_MS,
    t0: int = 1_700_000_000_000,
) -> Stream:
    """Random stream; ``disorder`` > 0 delays that fraction of events by up to max_delay_ms.

    User ids are sparse/large (raw ids, not dense indices). Increments mix ties (0 ms),
    bursts, minutes, exact window lengths (boundary hits) and silences longer than 24h.
    """
    rng = np.random.default_rng(seed)
    raw_ids = rng.choice(10**12, size=n_users, replace=False).astype(np.int64)
    user_of = rng.integers(0, n_users, size=n_events)
    kind = rng.choice(5, size=n_events, p=[0.15, 0.40, 0.25, 0.10, 0.10])
    inc = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3],
        [
            np.zeros(n_events),
            rng.exponential(20_000.0, n_events),
            rng.exponential(20 * MINUTE_MS, n_events),
            rng.choice([2_000, 5 * MINUTE_MS, HOUR_MS, DAY_MS], size=n_events),
        ],
        default=rng.uniform(DAY_MS, 3 * DAY_MS, n_events),
    ).astype(np.int64)
    times = np.empty(n_events, dtype=np.int64)
    for u in range(n_users):
        idx = np.flatnonzero(user_of == u)
        times[idx] = t0 + rng.integers(0, HOUR_MS) + np.cumsum(inc[idx])
    amounts = np.round(rng.lognormal(3.0, 1.2, n_events), 2)
    # constant runs make std windows of identical values
    amounts[rng.random(n_events) < 0.2] = 10.0
    merchants = rng.integers(0, 8, n_events).astype(np.int64) * 1_000_003
    arrival = times.astype(np.float64)
    if disorder > 0:
        delayed = rng.random(n_events) < disorder
        arrival[delayed] += rng.uniform(0, max_delay_ms, int(delayed.sum()))
    order = np.lexsort((rng.random(n_events), arrival))  # random tie-break across equal keys
    return Stream(
        users=raw_ids[user_of][order],
        times=times[order],
        amounts=amounts[order],
        merchants=merchants[order],
    )


def make_hot_stream(
    seed: int,
    *,
    hot_users: int = 1,
    hot_events: int = 20_000,
    span_ms: int = 20 * HOUR_MS,
    small_users: int = 20,
    small_events: int = 1_000,
    disorder: float = 0.0,
    max_delay_ms: int = 10 * MINUTE_MS,
    t0: int = 1_700_000_000_000,
) -> Stream:
    """Hot users (``hot_events`` each within ``span_ms``) among small ones.

    A hot user's history is cut in segments of 200-2000 events, each with its own amounts:
    heavy-tailed, long constant runs, nearly constant (10.0 with rare 10.01), small values
    with 1e6-1e9 spikes, strictly decreasing or increasing ramps (adversarial for max/min);
    and merchants from 5 ids or from 1e9 ids. Times have ties (10%) and a few gaps > 1h.
    """
    rng = np.random.default_rng(seed)
    users, times, amounts, merchants = [], [], [], []
    for h in range(hot_users):
        n = hot_events
        inc = rng.exponential(span_ms / n, n)
        inc[rng.random(n) < 0.1] = 0.0
        inc[rng.choice(n, size=3, replace=False)] = rng.uniform(2 * HOUR_MS, 3 * HOUR_MS, 3)
        inc *= span_ms / inc.sum()
        times.append(t0 + rng.integers(0, MINUTE_MS) + np.cumsum(inc).astype(np.int64))
        amt = np.empty(n)
        mer = np.empty(n, dtype=np.int64)
        lo = 0
        while lo < n:
            hi = min(n, lo + int(rng.integers(200, 2000)))
            k = hi - lo
            kind = rng.integers(0, 6)
            if kind == 0:
                seg = np.round(rng.lognormal(3.0, 2.0, k), 2)
            elif kind == 1:
                seg = np.full(k, rng.choice([10.0, 0.01, 123_456.78]))
            elif kind == 2:
                seg = np.where(rng.random(k) < 0.01, 10.01, 10.0)
            elif kind == 3:
                seg = np.round(rng.lognormal(1.0, 0.5, k), 2)
                spikes = rng.random(k) < 0.005
                seg[spikes] = 10.0 ** rng.uniform(6, 9, int(spikes.sum()))
            elif kind == 4:
                seg = np.linspace(10_000.0, 1.0, k)
            else:
                seg = np.linspace(1.0, 10_000.0, k)
            amt[lo:hi] = seg
            big = rng.random() < 0.5
            mer[lo:hi] = rng.integers(0, 10**9 if big else 5, k)
            lo = hi
        amounts.append(amt)
        merchants.append(mer)
        users.append(np.full(n, h, dtype=np.int64))
    m = small_events
    users.append(rng.integers(hot_users, hot_users + small_users, m))
    times.append(t0 + rng.integers(0, span_ms, m))
    amounts.append(np.round(rng.lognormal(3.0, 1.2, m), 2))
    merchants.append(rng.integers(0, 8, m))
    u = np.concatenate(users)
    t = np.concatenate(times)
    order = np.lexsort((rng.random(u.shape[0]), t))  # per-user time order, random ties
    u, t = u[order], t[order]
    a, mm = np.concatenate(amounts)[order], np.concatenate(merchants)[order]
    arrival = t.astype(np.float64)
    if disorder > 0:
        delayed = rng.random(u.shape[0]) < disorder
        arrival[delayed] += rng.uniform(0, max_delay_ms, int(delayed.sum()))
    order = np.argsort(arrival, kind="stable")  # equal arrival: keep per-user order
    raw_ids = (np.arange(hot_users + small_users, dtype=np.int64) + 1) * 7_919
    return Stream(
        users=raw_ids[u[order]],
        times=t[order].astype(np.int64),
        amounts=a[order].astype(np.float64),
        merchants=mm[order].astype(np.int64),
    )


def make_shuffled_hot_stream(
    seed: int,
    *,
    hot_users: int = 3,
    hot_events: int = 2_500,
    mean_gap_ms: int = 120,
    grid_ms: int = 50,
    small_users: int = 5,
    small_events: int = 300,
    disorder: float = 0.4,
    max_delay_ms: int = 4_500,
    t0: int = 1_700_000_000_000,
) -> Stream:
    """Dense users (``hot_events`` each, ~``mean_gap_ms`` apart) whose events arrive up to
    ``max_delay_ms`` late, among a few small users.

    Times are multiples of ``grid_ms`` (ties, and rows exactly at window boundaries for
    windows that are multiples of it), with a few silences of 20-40 s (windows empty, rows
    are evicted). Amounts come in segments of 20-300 events: rounded log-normal, constant
    runs (0.1, 10.0), rising and falling ramps, and small values with 1e9 spikes (which leave
    rounding residue in running sums); merchants from 3, 40 or 1e6 ids per segment (40:
    a merchant's previous occurrence is often seconds back).
    Delayed events arrive after events up to seconds newer; a delay may exceed the allowed
    lateness (dead-lettered rows).
    """
    rng = np.random.default_rng(seed)
    users, times, amounts, merchants = [], [], [], []
    for h in range(hot_users):
        n = hot_events
        inc = rng.exponential(mean_gap_ms, n)
        gaps = rng.random(n) < 0.01
        inc[gaps] = rng.uniform(20_000, 40_000, int(gaps.sum()))
        step = (np.cumsum(inc) // grid_ms).astype(np.int64) * grid_ms
        times.append(t0 + int(rng.integers(0, 10)) * grid_ms + step)
        amt = np.empty(n)
        mer = np.empty(n, dtype=np.int64)
        lo = 0
        while lo < n:
            hi = min(n, lo + int(rng.integers(20, 300)))
            k = hi - lo
            kind = rng.integers(0, 5)
            if kind == 0:
                seg = np.round(rng.lognormal(2.0, 1.0, k), 1)
            elif kind == 1:
                seg = np.full(k, rng.choice([0.1, 10.0]))
            elif kind == 2:
                seg = np.linspace(1.0, 500.0, k)
            elif kind == 3:
                seg = np.linspace(500.0, 1.0, k)
            else:
                seg = np.round(rng.lognormal(0.0, 0.5, k), 2)
                seg[rng.random(k) < 0.05] = 1e9
            amt[lo:hi] = seg
            mer[lo:hi] = rng.integers(0, rng.choice([3, 40, 10**6]), k)
            lo = hi
        amounts.append(amt)
        merchants.append(mer)
        users.append(np.full(n, h, dtype=np.int64))
    span = int(max(t.max() for t in times) - t0)
    m = small_events
    users.append(rng.integers(hot_users, hot_users + small_users, m))
    times.append(t0 + rng.integers(0, span // grid_ms, m) * grid_ms)
    amounts.append(np.round(rng.lognormal(3.0, 1.2, m), 2))
    merchants.append(rng.integers(0, 3, m))
    u = np.concatenate(users)
    t = np.concatenate(times)
    order = np.lexsort((rng.random(u.shape[0]), t))  # per-user time order, random ties
    u, t = u[order], t[order]
    a, mm = np.concatenate(amounts)[order], np.concatenate(merchants)[order]
    arrival = t.astype(np.float64)
    delayed = rng.random(u.shape[0]) < disorder
    arrival[delayed] += rng.integers(0, max_delay_ms // grid_ms + 1, int(delayed.sum())) * grid_ms
    order = np.lexsort((rng.random(u.shape[0]), arrival))  # equal arrival: random order
    raw_ids = (np.arange(hot_users + small_users, dtype=np.int64) + 1) * 104_729
    return Stream(
        users=raw_ids[u[order]],
        times=t[order].astype(np.int64),
        amounts=a[order].astype(np.float64),
        merchants=mm[order].astype(np.int64),
    )


def pandas_oracle(stream: Stream, specs: Sequence[FeatureSpec]) -> np.ndarray:
    """Features via pandas rolling/ewm; requires per-user non-decreasing times (in order)."""
    df = pd.DataFrame(
        {
            "user": stream.users,
            "time": stream.times,
            "amount": stream.amounts,
            "merchant_id": stream.merchants,
        }
    )
    if not (df.groupby("user")["time"].diff().fillna(0) >= 0).all():
        raise ValueError("pandas_oracle needs per-user in-order times")
    out = np.full((len(df), len(specs)), np.nan)
    for _, sub in df.groupby("user", sort=False):
        pos = sub.index.to_numpy()
        sub = sub.assign(ts=pd.to_datetime(sub["time"], unit="ms"))
        for f, s in enumerate(specs):
            if s.agg == "since_last":
                vals = (sub["time"].diff() / 1000.0).fillna(-1.0).to_numpy()
            elif s.agg == "ewm_mean":
                # ms-resolution times: pandas diffs float64(times) in the dtype's unit, and
                # ~1.7e18 ns loses ~256 ns per timestamp (1e-7 relative at a 2 s halflife)
                ms_times = sub["time"].to_numpy().astype("datetime64[ms]")
                vals = (
                    sub[s.column]
                    .ewm(halflife=pd.Timedelta(milliseconds=s.window_ms), times=ms_times)
                    .mean()
                    .to_numpy()
                )
            elif s.agg == "distinct":
                vals = _distinct_rolling(sub["time"].to_numpy(), sub[s.column].to_numpy(), s)
            elif s.agg == "last":
                vals = sub[s.column].to_numpy(np.float64)
            elif s.agg in DERIVED:
                continue
            elif s.agg == "count_same":
                same = pd.Series(np.nan, index=sub.index)
                for _, g in sub.groupby("merchant_id", sort=False):
                    roll = g.rolling(f"{s.window_ms}ms", on="ts")["amount"]
                    same[g.index] = roll.count().to_numpy()
                vals = same.to_numpy()
            elif s.agg in ("first", "quantile"):
                pick = (
                    (lambda x: x[0])
                    if s.agg == "first"
                    else (lambda x, p=s.percentile: bucketed(nearest_rank(x, p)))
                )
                roll = sub.rolling(f"{s.window_ms}ms", on="ts")[s.column]
                vals = roll.apply(pick, raw=True).to_numpy()
            else:
                # count has no column: count rows via any non-null column
                roll = sub.rolling(f"{s.window_ms}ms", on="ts")[s.column or "amount"]
                if s.agg == "std":
                    vals = roll.std(ddof=0).to_numpy()
                else:
                    vals = getattr(roll, s.agg)().to_numpy()
            out[pos, f] = vals
    derived_reference(out, specs)
    return out


def _distinct_rolling(times: np.ndarray, values: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Brute-force rolling nunique over rows j <= i with time in (t_i - w, t_i]."""
    if times.shape[0] > 2_000:  # O(n^2) Python is too slow for hot users
        return distinct_rolling_counter(times, values, spec.window_ms)
    res = np.empty(times.shape[0])
    for i in range(times.shape[0]):
        lo = times[i] - spec.window_ms
        res[i] = len({values[j] for j in range(i + 1) if times[j] > lo})
    return res


def distinct_rolling_counter(times: np.ndarray, values: np.ndarray, window_ms: int) -> np.ndarray:
    """Rolling nunique over time-sorted rows with a Counter and two pointers (O(n))."""
    res = np.empty(times.shape[0])
    counts: Counter[int] = Counter()
    lo = 0
    for i in range(times.shape[0]):
        counts[int(values[i])] += 1
        while times[lo] <= times[i] - window_ms:
            v = int(values[lo])
            counts[v] -= 1
            if not counts[v]:
                del counts[v]
            lo += 1
        res[i] = len(counts)
    return res


def bruteforce_oracle(
    stream: Stream, specs: Sequence[FeatureSpec], lateness_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    """Direct transcription of the arrival-order semantics; returns (features, late)."""
    n = len(stream)
    out = np.full((n, len(specs)), np.nan)
    late = np.zeros(n, dtype=bool)
    history: dict[int, list[tuple[int, float, int]]] = {}  # accepted events, arrival order
    tmax: dict[int, int] = {}
    for i in range(n):
        u = int(stream.users[i])
        t = int(stream.times[i])
        if u in tmax and t < tmax[u] - lateness_ms:
            late[i] = True
            continue
        hist = history.setdefault(u, [])
        hist.append((t, float(stream.amounts[i]), int(stream.merchants[i])))
        tmax[u] = max(tmax.get(u, t), t)
        for f, s in enumerate(specs):
            if s.agg in DERIVED:
                continue
            if s.agg == "last":
                out[i, f] = hist[-1][1] if s.column == "amount" else hist[-1][2]
            elif s.agg == "since_last":
                prev = [tj for tj, _, _ in hist[:-1] if tj <= t]
                out[i, f] = (t - max(prev)) / 1000.0 if prev else -1.0
            elif s.agg == "ewm_mean":
                w = np.array([0.5 ** ((tmax[u] - tj) / s.window_ms) for tj, _, _ in hist])
                x = np.array([a for _, a, _ in hist])
                out[i, f] = float((w * x).sum() / w.sum())
            else:
                rows = [(tj, a, m) for tj, a, m in hist if t - s.window_ms < tj <= t]
                amts = np.array([a for _, a, _ in rows])
                if s.agg == "count":
                    out[i, f] = len(rows)
                elif s.agg == "first":
                    out[i, f] = min(rows, key=lambda r: r[0])[1]  # min keeps the earliest
                elif s.agg == "quantile":
                    out[i, f] = bucketed(nearest_rank(amts, s.percentile))
                elif s.agg == "count_same":
                    out[i, f] = sum(1 for _, _, m in rows if m == hist[-1][2])
                elif s.agg == "distinct":
                    out[i, f] = len({m for _, _, m in rows})
                elif s.agg == "std":
                    out[i, f] = float(np.std(amts, ddof=0))
                else:
                    out[i, f] = float(getattr(np, s.agg)(amts))
    derived_reference(out, specs)
    return out, late


def bruteforce_oracle_np(
    stream: Stream, specs: Sequence[FeatureSpec], lateness_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bruteforce_oracle` with each user's accepted history in numpy arrays."""
    n = len(stream)
    out = np.full((n, len(specs)), np.nan)
    late = np.zeros(n, dtype=bool)
    cap = max(np.unique(stream.users, return_counts=True)[1], default=0)
    hist: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    size: dict[int, int] = {}
    tmax: dict[int, int] = {}
    for i in range(n):
        u = int(stream.users[i])
        t = int(stream.times[i])
        if u in tmax and t < tmax[u] - lateness_ms:
            late[i] = True
            continue
        if u not in hist:
            hist[u] = (np.empty(cap, np.int64), np.empty(cap), np.empty(cap, np.int64))
            size[u] = 0
        k = size[u]
        hist[u][0][k], hist[u][1][k], hist[u][2][k] = t, stream.amounts[i], stream.merchants[i]
        size[u] = k = k + 1
        tmax[u] = max(tmax.get(u, t), t)
        h = History(*(col[:k] for col in hist[u]), tmax=tmax[u])
        for f, s in enumerate(specs):
            ref = REFERENCES[s.agg]
            if ref is not None:
                out[i, f] = ref(h, s)
    derived_reference(out, specs)
    return out, late


def expiry_reference(
    stream: Stream, partition: np.ndarray, idle_ms: int, max_delay_ms: int
) -> tuple[np.ndarray, Stream]:
    """The expiry rules restated (``features.spec.Expiry``), for the oracles above:
    (``behind``: events more than ``max_delay_ms`` behind the newest earlier-or-same event
    of their partition, and the stream without them whose users are renamed per *session*:
    an event more than ``idle_ms`` after the newest of its user's earlier ones starts a new
    user, as the rule says it finds its user afresh)."""
    n = len(stream)
    behind = np.zeros(n, dtype=bool)
    clock: dict[int, int] = {}
    for i in range(n):
        p, t = int(partition[i]), int(stream.times[i])
        clock[p] = max(clock.get(p, t), t)
        behind[i] = t < clock[p] - max_delay_ms
    kept = np.flatnonzero(~behind)
    newest: dict[int, int] = {}
    session: dict[int, int] = {}
    renamed = np.empty(len(kept), dtype=np.int64)
    for j, i in enumerate(kept.tolist()):
        u, t = int(stream.users[i]), int(stream.times[i])
        if u in newest and t - newest[u] > idle_ms:
            session[u] = session.get(u, 0) + 1
        newest[u] = max(newest.get(u, t), t)
        renamed[j] = u * 1_000 + session.get(u, 0)  # sessions per user < 1,000 in tests
    return behind, Stream(renamed, stream.times[kept], stream.amounts[kept], stream.merchants[kept])
