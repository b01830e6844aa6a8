"""The README's DuckDB query runs on the offline store as documented, and means what it says.

The query is taken from the README itself (between its markers), run by DuckDB on parquet
part files written the way the worker writes them (a replayed part included, and a label
sent twice), and checked against the same numbers computed with pandas.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from featflow.settings import Settings
from features.backfill import backfill
from features.event_files import from_records
from features.offline import OfflineWriter
from infra.outcomes import decode_outcomes
from streams.generator import generate_events, generate_outcomes

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_query() -> str:
    text = README.read_text()
    block = re.search(r"<!-- analyst-query:begin.*?```sql\n(.*?)```", text, re.S)
    assert block, "the README lost its analyst query"
    return block.group(1)


def test_readme_query_on_the_offline_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()  # the default home, ./.featflow, as the README's paths assume
    events = generate_events(3000, users=40, start_ms=1_767_225_600_000, mean_gap_ms=2000, seed=4)
    table = backfill(from_records([v for _, v in events.records()]), lateness_ms=60_000).table
    writer = OfflineWriter(settings.stores.offline_dir)
    writer.write(table, tag="a")
    writer.write(table.slice(100, 500), tag="b")  # a replay after a crash: same records again
    labels = generate_outcomes(events, seed=4)
    raw = [v for _, v in labels.records()]
    outcomes, dead = decode_outcomes(raw, partitions=[0] * len(raw), offsets=range(len(raw)))
    assert dead == []
    OfflineWriter(settings.stores.outcomes_dir).write(outcomes, tag="0")
    # The label of the busiest user's last event sent again later, corrected: the later counts.
    busiest = np.bincount(np.unique(events.user_id, return_inverse=True)[1]).argmax()
    last = int(np.flatnonzero(events.user_id == np.unique(events.user_id)[busiest])[-1])
    assert list(labels.event_id)[last] == events.event_id[last]
    flipped = outcomes.slice(last, 1).to_pandas()
    flipped["label"] = 1 - flipped["label"]
    flipped["kafka_offset"] = len(raw)
    OfflineWriter(settings.stores.outcomes_dir).write(
        outcomes.from_pandas(flipped, schema=outcomes.schema), tag="1"
    )

    got = duckdb.sql(_readme_query()).df()

    f = table.to_pandas()
    lab = pd.Series(np.asarray(labels.label), index=list(labels.event_id))
    lab.iloc[last] = 1 - lab.iloc[last]
    f["label"] = f["event_id"].map(lab)
    burst = f["seconds_since_last_txn"].between(0, 30)
    rows = []
    for user, g in f.groupby("user_id"):
        rows.append(
            {
                "user_id": user,
                "events": len(g),
                "max_amount_24h": round(g["amount_sum_24h"].max(), 2),
                "fraud_rate_in_bursts": g.loc[burst[g.index], "label"].mean(),
                "fraud_rate_otherwise": g.loc[g["seconds_since_last_txn"] > 30, "label"].mean(),
            }
        )
    want = (
        pd.DataFrame(rows)
        .sort_values(["events", "user_id"], ascending=[False, True])
        .head(10)
        .reset_index(drop=True)
    )
    assert got["user_id"].tolist() == want["user_id"].tolist()
    assert got["events"].tolist() == want["events"].tolist()
    np.testing.assert_allclose(got["max_amount_24h"], want["max_amount_24h"], rtol=1e-12)
    for column in ("fraud_rate_in_bursts", "fraud_rate_otherwise"):
        np.testing.assert_allclose(got[column], want[column].round(3), atol=5e-4 + 1e-12)
