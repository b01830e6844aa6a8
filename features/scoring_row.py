"""The row a model scores: the transaction's user features, then its merchant's.

One definition for every path that builds it: training (``inference.train`` joins the
merchant views as of each event), stream scoring and ``/predict``. A user row names the
transaction's merchant (``merchant_id``, a key, not a model input); the merchant's features
are its newest rows in the two merchant views. A merchant with no rows yet reads as the
views' defaults (no transactions, no labels), in training and in serving alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from features.online import OnlineStore, default_features, open_online
from features.spec import DEFAULT_FEATURES, FeatureSpec
from features.views import MERCHANT_VIEWS

if TYPE_CHECKING:
    from feast import FeatureStore

#: The user feature that names the transaction's merchant.
MERCHANT_KEY = "merchant_id"


def is_key(spec: FeatureSpec) -> bool:
    """An id, not a quantity: a key to other rows, never a model input."""
    return spec.agg == "last" and spec.column != "amount"


USER_INPUTS: tuple[str, ...] = tuple(s.name for s in DEFAULT_FEATURES if not is_key(s))
MERCHANT_SPECS: tuple[FeatureSpec, ...] = tuple(s for v in MERCHANT_VIEWS for s in v.specs)
MERCHANT_INPUTS: tuple[str, ...] = tuple(s.name for s in MERCHANT_SPECS)
#: The model's inputs, in column order.
SCORING_FEATURES: tuple[str, ...] = (*USER_INPUTS, *MERCHANT_INPUTS)
#: A merchant with no rows yet.
MERCHANT_DEFAULTS: np.ndarray = default_features(MERCHANT_SPECS)

_USER_COLUMNS = np.array([i for i, s in enumerate(DEFAULT_FEATURES) if not is_key(s)])
_KEY_COLUMN = [s.name for s in DEFAULT_FEATURES].index(MERCHANT_KEY)


def merchants_of(user_features: np.ndarray) -> np.ndarray:
    """The merchant each user row names."""
    return user_features[:, _KEY_COLUMN].astype(np.int64)


def scoring_rows(user_features: np.ndarray, merchant_features: np.ndarray) -> np.ndarray:
    """Rows in :data:`SCORING_FEATURES` order from user rows (``DEFAULT_FEATURES`` order) and
    their merchants' rows (:data:`MERCHANT_INPUTS` order)."""
    return np.hstack([user_features[:, _USER_COLUMNS], merchant_features])


class MerchantReader:
    """Reads merchants' newest rows of both merchant views from the online store."""

    def __init__(self, store: FeatureStore):
        first, *rest = MERCHANT_VIEWS
        # one read per merchant for both views (Redis: one HMGET of the merchant's hash)
        self._store: OnlineStore = open_online(store, first.specs, view=first, also=rest)

    def read(self, merchant_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """[n, len(MERCHANT_INPUTS)]: each merchant's features, defaults for unknown ones;
        each distinct merchant read once."""
        ids = np.asarray(merchant_ids, dtype=np.int64)
        unique, inverse = np.unique(ids, return_inverse=True)
        if not len(ids):
            return np.empty((0, len(MERCHANT_INPUTS)))
        return self._store.read(unique.tolist())[0][inverse]
