"""Batch backfill of the merchant views: the stream's merchant state over files.

The accepted events (a user backfill's rows, in input order) feed ``merchant_activity`` and
the labels that name their merchant (in file order, at their ``outcome_time``) feed
``merchant_outcomes``, through the same :class:`~features.merchant_state.MerchantState` the
merchant worker runs. The two views are independent, so how events and labels interleave
does not matter; within each, input order is the arrival order (in the stream, the order
rows reached their merchant partition).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from features.merchant_state import MerchantState, accepted
from features.views import MERCHANT_ACTIVITY, MERCHANT_OUTCOMES, USER
from infra.merchant_rows import EVENTS, OUTCOMES, MerchantRows, empty


def event_rows(users: pa.Table) -> MerchantRows:
    """The user rows' events (``event_id, user_id, event_timestamp, amount, merchant_id,
    kafka_partition, kafka_offset``: a user view's offline rows) as merchant rows."""
    n = users.num_rows

    def col(name: str, dtype: type) -> np.ndarray:
        return users.column(name).to_numpy().astype(dtype)

    return MerchantRows(
        np.full(n, EVENTS, np.int8),
        col("kafka_partition", np.int32),
        col("kafka_offset", np.int64),
        col("merchant_id", np.int64),
        col("user_id", np.int64),
        users.column("event_timestamp").cast(pa.int64()).to_numpy(),
        col("amount", np.float64),
        users.column("event_id").combine_chunks().cast(pa.string()),
    )


def label_rows(labels: pd.DataFrame) -> MerchantRows:
    """Labels (``event_id``, ``label``, ``merchant_id``, ``outcome_time`` in epoch ms or a
    timestamp) that name their merchant, as merchant rows in file order; labels without a
    merchant or a time are not rows of any merchant."""
    if "merchant_id" not in labels.columns:
        return empty()
    when = "outcome_time" if "outcome_time" in labels.columns else "outcome_timestamp"
    if when not in labels.columns:
        return empty()
    times = labels[when]
    if pd.api.types.is_numeric_dtype(times):
        times_ms = pd.to_numeric(times, errors="coerce")
    else:  # timestamps (naive ones are UTC) or RFC 3339 strings, as the topic takes them
        stamps = pd.to_datetime(times, utc=True, errors="coerce", format="mixed")
        times_ms = stamps.dt.as_unit("ms").astype("int64").where(stamps.notna())
    named = labels["merchant_id"].notna() & times_ms.notna()
    n = int(named.sum())
    return MerchantRows(
        np.full(n, OUTCOMES, np.int8),
        np.full(n, -1, np.int32),
        np.flatnonzero(named.to_numpy()).astype(np.int64),
        labels.loc[named, "merchant_id"].to_numpy(np.int64),
        (labels.loc[named, "user_id"] if "user_id" in labels else pd.Series(0, range(n))).to_numpy(
            np.int64
        ),
        times_ms[named].to_numpy(np.int64),
        labels.loc[named, "label"].to_numpy(np.float64),
        pa.array(labels.loc[named, "event_id"].astype(str).tolist(), type=pa.string()),
    )


def merchant_backfill(users: pa.Table, labels: pd.DataFrame | None) -> dict[str, pa.Table]:
    """Each merchant view's offline rows, by view name."""
    rows = event_rows(users)
    if labels is not None:
        rows = MerchantRows.concat([rows, label_rows(labels)])
    update = MerchantState().update(rows)
    return {
        MERCHANT_ACTIVITY.name: accepted(MERCHANT_ACTIVITY, update.activity_rows, update.activity)[
            1
        ],
        MERCHANT_OUTCOMES.name: accepted(MERCHANT_OUTCOMES, update.outcome_rows, update.outcomes)[
            1
        ],
    }


def write_views(root: Path, users: pa.Table, labels: pd.DataFrame | None, tag: str) -> Path:
    """A backfill's offline store under ``root``: the user rows and both merchant views,
    each in its folder (``root/<view>``, the layout of ``$FEATFLOW_HOME/offline``); returns
    the user view's folder (what ``inference.train.training_set_by_event`` takes)."""
    from features.offline import OfflineWriter

    OfflineWriter(root / USER.name).write(users, tag=tag)
    for name, table in merchant_backfill(users, labels).items():
        OfflineWriter(root / name).write(table, tag=tag)
    return root / USER.name
