"""The feature views: which entity each feature list is keyed by, and where its rows live.

A view is one Feast feature view (an entity, its join key, the features) and one window
state per partition in the stream. The kernels are entity-agnostic: they key rows by an
entity id and read a second id (the other entity of the row) for ``distinct`` and
``count_same``; a view says which is which.

* ``user_txn_features``: keyed by ``user_id``, the events as producers key them.
* ``merchant_activity``: keyed by ``merchant_id``, the same accepted events re-keyed by
  merchant (``streams.shuffle``); the second id is the paying user.
* ``merchant_outcomes``: keyed by ``merchant_id``, labels that name their merchant, placed at
  their ``outcome_time``: a merchant's row as of time t holds only labels known by t.

>>> [v.name for v in VIEWS]
['user_txn_features', 'merchant_activity', 'merchant_outcomes']
"""

from __future__ import annotations

from dataclasses import dataclass

from features.spec import (
    DAY_MS,
    DEFAULT_FEATURES,
    DEFAULT_LATENESS_MS,
    MERCHANT_ACTIVITY_FEATURES,
    MERCHANT_OUTCOME_FEATURES,
    Column,
    FeatureSpec,
)


@dataclass(frozen=True)
class View:
    """One feature view: its Feast names, its features and its window state's lateness.

    ``other_id`` is the id the kernels' second id column holds in this view's rows (what
    ``distinct``/``count_same`` read). ``lateness_ms`` bounds how far behind its entity's
    newest row a row may arrive and still be counted. A merchant's rows come from every user
    partition, and a worker catching up fetches each partition's backlog in turn, so one
    partition's rows can reach the merchant hours behind another's: the merchant views
    allow their longest window (state then holds twice the window, the memory price).
    """

    name: str
    entity: str
    join_key: str
    entity_description: str
    description: str
    specs: tuple[FeatureSpec, ...]
    other_id: Column | None
    lateness_ms: int

    def __post_init__(self) -> None:
        for s in self.specs:
            if s.agg in ("distinct", "count_same") and s.column != self.other_id:
                raise ValueError(
                    f"{self.name}: {s.name} reads {s.column}, but this view's rows hold "
                    f"{self.other_id} as their second id"
                )

    @property
    def push_source(self) -> str:
        """Name of the view's Feast push source."""
        return f"{self.name}_push"

    @property
    def offline_source(self) -> str:
        """Name of the view's Feast file source (its parquet part files)."""
        return f"{self.name}_offline"


USER = View(
    name="user_txn_features",
    entity="user",
    join_key="user_id",
    entity_description="A card holder; events are keyed by user_id.",
    description="Per-user sliding-window transaction features, as of each event.",
    specs=DEFAULT_FEATURES,
    other_id="merchant_id",
    lateness_ms=DEFAULT_LATENESS_MS,
)
MERCHANT_ACTIVITY = View(
    name="merchant_activity",
    entity="merchant",
    join_key="merchant_id",
    entity_description="A merchant; its rows are the events re-keyed by merchant_id.",
    description="Per-merchant sliding-window activity, as of each transaction at it.",
    specs=MERCHANT_ACTIVITY_FEATURES,
    other_id="user_id",
    lateness_ms=DAY_MS,
)
MERCHANT_OUTCOMES = View(
    name="merchant_outcomes",
    entity="merchant",
    join_key="merchant_id",
    entity_description=MERCHANT_ACTIVITY.entity_description,
    description="Per-merchant label counts, as of each label's outcome_time.",
    specs=MERCHANT_OUTCOME_FEATURES,
    other_id=None,
    lateness_ms=7 * DAY_MS,
)
VIEWS: tuple[View, ...] = (USER, MERCHANT_ACTIVITY, MERCHANT_OUTCOMES)
MERCHANT_VIEWS: tuple[View, ...] = (MERCHANT_ACTIVITY, MERCHANT_OUTCOMES)
