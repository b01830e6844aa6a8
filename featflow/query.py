"""``featflow query "SQL"``: DuckDB over the parquet files featflow writes.

Views, each over every parquet file below its folder of ``$FEATFLOW_HOME`` (files read by
column name, so part files written before a column was added still read):

- ``features``: the offline feature rows (stream and backfill), ``offline/``;
- ``outcomes``: the stored labels, ``outcomes/``;
- ``monitoring``: the monitor's snapshot rows, ``monitoring/``;
- ``predictions``: the predictions the monitor read, ``predictions/``;
- ``model_events``: the hash-chained model history, ``models/model_events.jsonl``.

A view whose folder holds no parquet yet is absent; a query naming it gets DuckDB's own
"does not exist" message, like any other bad query: the CLI prints it and exits 2.
"""

from __future__ import annotations

import io
from pathlib import Path

from inference.model_events import FILENAME
from infra.config import Stores

FORMATS = ("table", "csv", "json")


class QueryError(ValueError):
    """DuckDB refused the query (its message is the text)."""


def views(stores: Stores) -> dict[str, Path]:
    """View name -> the folder it reads."""
    return {
        "features": stores.offline_dir,
        "merchant_activity": stores.view_dir("merchant_activity"),
        "merchant_outcomes": stores.view_dir("merchant_outcomes"),
        "outcomes": stores.outcomes_dir,
        "monitoring": stores.monitoring_dir,
        "predictions": stores.predictions_dir,
    }


def run_query(stores: Stores, sql: str, fmt: str = "table") -> str:
    """The result of ``sql`` over the views, as text in ``fmt`` (table, csv or json)."""
    import duckdb

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    con = duckdb.connect()
    try:
        for name, folder in views(stores).items():
            if folder.is_dir() and any(folder.rglob("*.parquet")):
                pattern = str(folder / "**" / "*.parquet").replace("'", "''")
                con.execute(
                    f"CREATE VIEW {name} AS SELECT * FROM "
                    f"read_parquet('{pattern}', union_by_name = true)"
                )
        events = stores.models_dir / FILENAME
        if events.exists():
            path = str(events).replace("'", "''")
            con.execute(
                f"CREATE VIEW model_events AS SELECT * FROM read_json_auto('{path}', "
                "format = 'newline_delimited')"
            )
        try:
            frame = con.sql(sql).df()
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from None
        except AttributeError:  # a statement with no result (CREATE, SET ...)
            return ""
    finally:
        con.close()
    if fmt == "csv":
        out = io.StringIO()
        frame.to_csv(out, index=False)
        return out.getvalue()
    if fmt == "json":
        return frame.to_json(orient="records", date_format="iso") + "\n"
    return frame.to_string(index=False) + "\n"
