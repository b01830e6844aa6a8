"""The backfill features in DuckDB SQL: events parquet in, features parquet out.

Run as a script (``python benchmarks/engine_duckdb.py IN OUT SPECS_JSON``) so that its process
imports DuckDB and nothing of featflow: ``backfill_vs_engines`` times the whole process.
SPECS_JSON is ``features.spec.spec_fingerprint(benchmarks._common.ENGINE_FEATURES)``.

Semantics as featflow's kernels (features/kernels/driver.py) for in-order input: a row's window is
the user's rows in ``(t - w, t]`` that arrived no later than it. ``RANGE ... PRECEDING AND
CURRENT ROW`` takes in every peer (equal time), later arrivals too, so the RANGE count only
sizes the window: the frame is ``ROWS BETWEEN back PRECEDING AND CURRENT ROW`` over
``ORDER BY event_time, file row``, with ``back`` = RANGE count - later peers - 1 (DuckDB
accepts per-row frame offsets). ``ewm_mean`` has no SQL function: it is a ratio of running
sums weighted by ``2 ** ((t - t0) / h)``, ``t0`` the user's first time, exact while a user's
history spans under ~1000 half-lives (then the weights overflow). Lateness rules are not
expressed: every row is taken (the benchmark's events are in order, none is late).
"""

from __future__ import annotations

import json
import sys

import duckdb


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def feature_sql(specs: list[list[object]]) -> tuple[str, str, str]:
    """(per-row window sizes, weights, feature select list) for the spec list."""
    sizes: dict[str, str] = {}  # one per window length
    weights: list[str] = []
    selects: list[str] = []
    order = "PARTITION BY user_id ORDER BY t, arr"
    for name, agg, column, window, *_ in specs:
        if agg == "since_last":
            selects.append(f"coalesce((t - lag(t) OVER ({order})) / 1000.0, -1.0) AS {name}")
            continue
        if agg == "ewm_mean":
            w = f"wt_{name}"
            weights.append(f"pow(2.0, (t - t0) / {float(window)}) AS {w}")
            running = f"OVER ({order} ROWS UNBOUNDED PRECEDING)"
            selects.append(f"sum({column} * {w}) {running} / sum({w}) {running} AS {name}")
            continue
        back = f"back_{window}"
        sizes.setdefault(
            back,
            f"count(*) OVER (PARTITION BY user_id ORDER BY t RANGE BETWEEN {int(window) - 1}"
            f" PRECEDING AND CURRENT ROW) - later_peers - 1 AS {back}",
        )
        frame = f"OVER ({order} ROWS BETWEEN {back} PRECEDING AND CURRENT ROW)"
        expr = {
            "count": f"{back} + 1",
            "sum": f"sum({column}) {frame}",
            "mean": f"avg({column}) {frame}",
            "std": f"stddev_pop({column}) {frame}",
            "max": f"max({column}) {frame}",
            "min": f"min({column}) {frame}",
            "distinct": f"count(DISTINCT {column}) {frame}",
        }[str(agg)]
        selects.append(f"{expr} AS {name}")
    return ",\n  ".join(sizes.values()), ",\n  ".join(weights), ",\n  ".join(selects)


def main(argv: list[str]) -> None:
    source, output, specs_json = argv
    specs = json.loads(specs_json)
    sizes, weights, selects = feature_sql(specs)
    sql = f"""
COPY (
WITH e AS (
  SELECT event_id, user_id, merchant_id, amount, event_time AS t, file_row_number AS arr
  FROM read_parquet({_q(source)}, file_row_number = true)
), p AS (
  SELECT *,
    count(*) OVER (PARTITION BY user_id, t)
      - row_number() OVER (PARTITION BY user_id, t ORDER BY arr) AS later_peers,
    min(t) OVER (PARTITION BY user_id) AS t0
  FROM e
), q AS (
  SELECT *,
  {", ".join(x for x in (sizes, weights) if x)}
  FROM p
)
SELECT event_id, user_id, make_timestamp_ms(t) AS event_timestamp,
  {selects}
FROM q ORDER BY arr
) TO {_q(output)} (FORMAT parquet)
"""
    duckdb.connect().execute(sql)


if __name__ == "__main__":
    main(sys.argv[1:])
