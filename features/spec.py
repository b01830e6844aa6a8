"""Declarative feature specs: the single source of truth for feature names and semantics.

The stream worker, the batch backfill, generated docs and the Feast feature view all read
``DEFAULT_FEATURES``; the kernels are generic over the spec list (they dispatch on integer
codes derived from it), so adding a feature is a one-line change to that tuple.

Three kinds of feature, all computed per event as of that event:

* **windowed** aggregations of the user's rows in ``(t - window_ms, t]``;
* **unwindowed** ones read per-entity state (``since_last``, ``ewm_mean``) or the event
  itself (``last``: this event's amount or merchant);
* **derived** ones combine other features of the same row (``ratio``, ``difference``,
  ``below``, ``equals``), after the kernels, in :mod:`features.derived`: every path that
  computes a row (stream, backfill, request time) goes through that one function.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

Agg = Literal[
    "count", "sum", "mean", "std", "max", "min", "distinct", "first", "quantile",
    "count_same", "since_last", "ewm_mean", "last",
    "ratio", "difference", "below", "equals",
]  # fmt: skip
#: ``merchant_id`` and ``user_id`` are the other entity's id in a row (a user's rows hold their
#: merchants, a merchant's rows their users): the kernels read both from one id column, and a
#: view (``features.views``) says which id fills it.
Column = Literal["amount", "merchant_id", "user_id"]

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

AGGS: tuple[str, ...] = get_args(Agg)
COLUMNS: tuple[str, ...] = get_args(Column)

# Aggregations over the sliding window (t - window_ms, t]; these set how much history the
# per-entity state must retain. ``ewm_mean`` uses window_ms as a halflife and needs no history.
WINDOWED_AGGS: frozenset[str] = frozenset(
    {"count", "sum", "mean", "std", "max", "min", "distinct", "first", "quantile", "count_same"}
)
# Row-wise functions of other features of the same row (``inputs``), not kernel work.
DERIVED_AGGS: frozenset[str] = frozenset({"ratio", "difference", "below", "equals"})
# How many input features each derived operation takes; ``below``/``equals`` compare their
# one input with ``threshold``.
_ARITY = {"ratio": 2, "difference": 2, "below": 1, "equals": 1}

# Which input column each aggregation may read. Kept as a table (not if/else in the kernels)
# so that widening e.g. ``distinct`` to another column is a data change plus a kernel test.
_ALLOWED_COLUMNS: dict[str, tuple[str | None, ...]] = {
    "count": (None,),
    "since_last": (None,),
    "sum": ("amount",),
    "mean": ("amount",),
    "std": ("amount",),
    "max": ("amount",),
    "min": ("amount",),
    "first": ("amount",),
    "quantile": ("amount",),
    "ewm_mean": ("amount",),
    "distinct": ("merchant_id", "user_id"),
    "count_same": ("merchant_id", "user_id"),
    "last": ("amount", "merchant_id"),
    **{op: (None,) for op in DERIVED_AGGS},
}

# Names become Feast fields / parquet columns, so keep them boring and portable.
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

# Default allowed lateness (per entity) shared by stream and backfill; both must use the same
# value or their outputs diverge.
DEFAULT_LATENESS_MS = 60 * SECOND_MS


@dataclass(frozen=True)
class Expiry:
    """How long an idle entity is remembered; shared by stream and backfill like lateness.

    ``idle_ms``: an event more than this after its entity's newest finds the entity afresh,
    as if never seen (``since_last`` -1, the ewm restarts; every window is empty by then,
    which is why it must be at least the longest window plus the lateness).
    ``max_delay_ms``: an event more than this behind the newest event of its partition is
    late (dead-lettered). With both, a partition's state drops an entity idle for longer
    than their sum (the ``WindowState`` docstring says why no row changes).
    """

    idle_ms: int | None = None
    max_delay_ms: int | None = None

    def __post_init__(self) -> None:
        for name in ("idle_ms", "max_delay_ms"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")

    @property
    def purges(self) -> bool:
        """Whether idle entities can be dropped from memory (both bounds set)."""
        return self.idle_ms is not None and self.max_delay_ms is not None


NO_EXPIRY = Expiry()  # entities remembered for ever, no event behind a clock refused
# 30 days idle starts a user afresh; events a week behind their partition are refused: a
# user's state is held while it was active in the last 37 days of its partition's time.
DEFAULT_EXPIRY = Expiry(idle_ms=30 * DAY_MS, max_delay_ms=7 * DAY_MS)


@dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    """One output feature: ``agg`` of ``column`` over a sliding event-time window, or a
    derived value of other features of the row.

    ``window_ms`` is the sliding window length, the halflife for ``ewm_mean`` and ``None``
    for ``since_last``, ``last`` and derived features. ``percentile`` (an integer 1-99) is the
    rank of a ``quantile``; ``inputs`` and ``threshold`` define a derived feature. Validated on
    construction so a bad spec fails at import time, not deep inside a Numba kernel.
    """

    name: str
    agg: Agg
    column: Column | None
    window_ms: int | None
    description: str
    percentile: int | None = None
    inputs: tuple[str, ...] = ()
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"feature name {self.name!r} must match {_NAME_RE.pattern} (used as a column name)"
            )
        if self.agg not in _ALLOWED_COLUMNS:
            raise ValueError(f"{self.name}: unknown agg {self.agg!r}; expected one of {AGGS}")
        allowed = _ALLOWED_COLUMNS[self.agg]
        if self.column not in allowed:
            if allowed == (None,):
                raise ValueError(
                    f"{self.name}: agg {self.agg!r} takes no column, got {self.column!r}"
                )
            raise ValueError(
                f"{self.name}: agg {self.agg!r} requires column in {allowed}, got {self.column!r}"
            )
        if self.agg in ("since_last", "last") or self.agg in DERIVED_AGGS:
            if self.window_ms is not None:
                raise ValueError(
                    f"{self.name}: {self.agg} takes no window_ms, got {self.window_ms!r}"
                )
        elif (
            isinstance(self.window_ms, bool)
            or not isinstance(self.window_ms, int)
            or self.window_ms <= 0
        ):
            what = "halflife" if self.agg == "ewm_mean" else "window"
            raise ValueError(
                f"{self.name}: {self.agg} needs a positive integer {what} in window_ms, "
                f"got {self.window_ms!r}"
            )
        if (self.agg == "quantile") != (self.percentile is not None):
            raise ValueError(f"{self.name}: a percentile is for (and needed by) quantile only")
        if self.percentile is not None and (
            isinstance(self.percentile, bool)
            or not isinstance(self.percentile, int)
            or not 1 <= self.percentile <= 99
        ):
            raise ValueError(f"{self.name}: percentile must be an integer in 1..99")
        self._check_derived()
        if not isinstance(self.description, str) or not self.description.strip():
            raise ValueError(f"{self.name}: description must be a non-empty string")
        if "\n" in self.description:
            raise ValueError(f"{self.name}: description must be a single line")

    def _check_derived(self) -> None:
        if self.agg not in DERIVED_AGGS:
            if self.inputs or self.threshold is not None:
                raise ValueError(f"{self.name}: inputs and threshold are for derived features")
            return
        arity = _ARITY[self.agg]
        if (
            not isinstance(self.inputs, tuple)
            or len(self.inputs) != arity
            or not all(isinstance(x, str) for x in self.inputs)
        ):
            raise ValueError(f"{self.name}: {self.agg} takes {arity} input feature name(s)")
        if arity == 1:
            if (
                isinstance(self.threshold, bool)
                or not isinstance(self.threshold, (int, float))
                or not math.isfinite(self.threshold)
            ):
                raise ValueError(f"{self.name}: {self.agg} needs a finite threshold")
        elif self.threshold is not None:
            raise ValueError(f"{self.name}: {self.agg} takes no threshold")


def validate_specs(specs: Iterable[FeatureSpec]) -> tuple[FeatureSpec, ...]:
    """Check a spec list as a whole (non-empty, all FeatureSpec, unique names, a derived
    feature's inputs defined earlier in the list and not derived themselves); return a tuple.

    Inputs come from the kernels' features only, so every derived value is one step from
    them, whatever order the list is computed in.
    """
    out = tuple(specs)
    if not out:
        raise ValueError("at least one FeatureSpec is required")
    for s in out:
        if not isinstance(s, FeatureSpec):
            raise ValueError(f"expected FeatureSpec, got {type(s).__name__}: {s!r}")
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate feature names: {dupes}")
    earlier: set[str] = set()
    for s in out:
        for name in s.inputs:
            if name not in earlier:
                raise ValueError(
                    f"{s.name}: input {name!r} must be a non-derived feature listed before it"
                )
        if s.agg not in DERIVED_AGGS:
            earlier.add(s.name)
    return out


def kernel_specs(specs: Sequence[FeatureSpec]) -> tuple[FeatureSpec, ...]:
    """The specs the kernels compute (all but the derived ones), in list order."""
    return tuple(s for s in specs if s.agg not in DERIVED_AGGS)


def feature_names(specs: Sequence[FeatureSpec]) -> tuple[str, ...]:
    """Output column names, in spec order (the column order of the kernel's feature matrix)."""
    return tuple(s.name for s in specs)


def max_window_ms(specs: Iterable[FeatureSpec]) -> int:
    """Longest sliding window (ms) among windowed specs; 0 if none.

    Together with the allowed lateness this bounds per-entity history retention.
    """
    return max((s.window_ms or 0 for s in specs if s.agg in WINDOWED_AGGS), default=0)


def spec_fingerprint(specs: Sequence[FeatureSpec]) -> list[list[object]]:
    """JSON-able identity of a spec list (everything that changes a feature's value)."""
    return [
        [s.name, s.agg, s.column, s.window_ms, s.percentile, list(s.inputs), s.threshold]
        for s in specs
    ]


def _f(
    name: str, agg: Agg, column: Column | None, window_ms: int | None, text: str, **extra: object
) -> FeatureSpec:
    return FeatureSpec(
        name=name, agg=agg, column=column, window_ms=window_ms, description=text, **extra
    )  # type: ignore[arg-type]


# One line per feature: (name, aggregation, column, window_ms or ewm halflife, description,
# then a quantile's percentile or a derived feature's inputs and threshold). Adding a feature
# is adding a line; kernels, Feast repo, docs and tests follow.
# fmt: off
DEFAULT_FEATURES: tuple[FeatureSpec, ...] = validate_specs([
    _f("txn_count_5m", "count", None, 5 * MINUTE_MS, "Transactions in the last 5 minutes (incl. this one)."),  # noqa: E501
    _f("txn_count_1h", "count", None, HOUR_MS, "Transactions in the last hour (incl. this one)."),
    _f("txn_count_24h", "count", None, DAY_MS, "Transactions in the last 24 hours (incl. this one)."),  # noqa: E501
    _f("amount_sum_1h", "sum", "amount", HOUR_MS, "Sum of amounts in the last hour."),
    _f("amount_sum_24h", "sum", "amount", DAY_MS, "Sum of amounts in the last 24 hours."),
    _f("amount_mean_24h", "mean", "amount", DAY_MS, "Mean amount in the last 24 hours."),
    _f("amount_std_24h", "std", "amount", DAY_MS, "Population std (ddof=0) of amounts in the last 24 hours; 0.0 for one."),  # noqa: E501
    _f("amount_max_1h", "max", "amount", HOUR_MS, "Largest amount in the last hour."),
    _f("merchant_distinct_24h", "distinct", "merchant_id", DAY_MS, "Distinct merchants in the last 24 hours."),  # noqa: E501
    _f("seconds_since_last_txn", "since_last", None, None, "Seconds since the user's previous transaction; -1.0 for the first."),  # noqa: E501
    _f("amount_ewm_mean_1h", "ewm_mean", "amount", HOUR_MS, "Exponentially weighted mean amount, halflife 1 hour (event time)."),  # noqa: E501
    _f("amount", "last", "amount", None, "This transaction's amount."),
    _f("merchant_id", "last", "merchant_id", None, "This transaction's merchant: the key its merchant features are read by (not a model input)."),  # noqa: E501
    _f("amount_median_24h", "quantile", "amount", DAY_MS, "Median amount in the last 24 hours (nearest rank, within 1.6 %).", percentile=50),  # noqa: E501
    _f("amount_p95_24h", "quantile", "amount", DAY_MS, "95th percentile of amounts in the last 24 hours (nearest rank, within 1.6 %).", percentile=95),  # noqa: E501
    _f("merchant_txn_count_24h", "count_same", "merchant_id", DAY_MS, "Transactions of this user at this merchant in the last 24 hours (incl. this one)."),  # noqa: E501
    _f("amount_to_median_24h", "ratio", None, None, "This amount over the 24-hour median; 0.0 when the median is 0.", inputs=("amount", "amount_median_24h")),  # noqa: E501
    _f("amount_to_mean_24h", "ratio", None, None, "This amount over the 24-hour mean; 0.0 when the mean is 0.", inputs=("amount", "amount_mean_24h")),  # noqa: E501
    _f("first_time_at_merchant_24h", "equals", None, None, "1 if this is the user's first transaction at this merchant in 24 hours, else 0.", inputs=("merchant_txn_count_24h",), threshold=1.0),  # noqa: E501
])
# fmt: on

# The merchant entity's two views (``features.views``). Activity rows come from the accepted
# events re-keyed by merchant (id column: the paying user); outcome rows from the labels that
# name their merchant, at their ``outcome_time`` (amount: the label, 1 = fraud), so a row as of
# time t holds only labels known by t.
# fmt: off
MERCHANT_ACTIVITY_FEATURES: tuple[FeatureSpec, ...] = validate_specs([
    _f("merchant_txns_1h", "count", None, HOUR_MS, "Transactions at this merchant in the last hour (incl. this one)."),  # noqa: E501
    _f("merchant_txns_24h", "count", None, DAY_MS, "Transactions at this merchant in the last 24 hours (incl. this one)."),  # noqa: E501
    _f("merchant_users_24h", "distinct", "user_id", DAY_MS, "Distinct users paying this merchant in the last 24 hours."),  # noqa: E501
    _f("merchant_amount_mean_24h", "mean", "amount", DAY_MS, "Mean amount paid at this merchant in the last 24 hours."),  # noqa: E501
])
MERCHANT_OUTCOME_FEATURES: tuple[FeatureSpec, ...] = validate_specs([
    _f("merchant_labels_7d", "count", None, 7 * DAY_MS, "Labels of this merchant's transactions known in the last 7 days (incl. this one)."),  # noqa: E501
    _f("merchant_frauds_7d", "sum", "amount", 7 * DAY_MS, "Of those, labelled fraud."),
    _f("merchant_fraud_rate_7d", "ratio", None, None, "Fraud share of this merchant's labels known in the last 7 days.", inputs=("merchant_frauds_7d", "merchant_labels_7d")),  # noqa: E501
])
# fmt: on

#: The default features' names, in the column order of every feature matrix and model input.
FEATURE_NAMES: tuple[str, ...] = feature_names(DEFAULT_FEATURES)
