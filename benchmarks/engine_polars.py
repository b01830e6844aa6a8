"""The backfill features in Polars: events parquet in, features parquet out.

Run as a script (``python benchmarks/engine_polars.py IN OUT SPECS_JSON``) so that its process
imports Polars and nothing of featflow: ``backfill_vs_engines`` times the whole process.
SPECS_JSON is ``features.spec.spec_fingerprint(DEFAULT_FEATURES)``.

Semantics as featflow's kernels (features/kernels.py) for in-order input: a row's window is
the user's rows in ``(t - w, t]`` that arrived no later than it. Polars' ``rolling_*_by``
windows hold every row with an equal time (later arrivals too) and there is no per-row
``ROWS`` frame, so each window is split in two exact parts: ``closed="none"``, the rows in
``(t - w, t)``, plus the row's peers (same user and time) up to itself, a cumulative
aggregate over ``(user_id, event_time)`` in file order. count, sum and max/min combine
directly; mean is sum / count; the population variance combines the two parts' counts,
means and variances (Chan et al.), the peers' part shifted by their first amount so that
equal amounts give exactly 0. ``distinct`` has no rolling function: ``n_unique`` over a
rolling group-by (``DataFrame.rolling(..., group_by="user_id")``) for ``(t - w, t)``, plus
the peers whose merchant is new (first among the peers and absent from ``(t - w, t)``: its
previous occurrence is older than ``t - w``). ``ewm_mean`` is a ratio of cumulative sums
weighted by ``2 ** ((t - t0) / h)``, as the DuckDB script does: Polars' ``ewm_mean_by`` is
the recursive, unadjusted form (``y = a x + (1 - a) y_prev``), a different feature.
Lateness rules are not expressed: every row is taken (the benchmark's events are in order).
"""

from __future__ import annotations

import json
import sys

import polars as pl

USER, TIME = "user_id", "event_time"
PEERS = [USER, TIME]


def _window_exprs(agg: str, column: str | None, w: int) -> pl.Expr:
    """One windowed feature (not distinct) as the ``(t - w, t)`` part plus the peers' part."""
    size = f"{w}i"
    x = pl.col(column or "one")  # count reads no column
    n_a = pl.col("one").rolling_sum_by(TIME, size, closed="none").over(USER).fill_null(0.0)
    k = pl.col("one").cum_sum().over(PEERS)
    if agg == "count":
        return (n_a + k).cast(pl.Int64)
    s_a = x.rolling_sum_by(TIME, size, closed="none").over(USER).fill_null(0.0)
    s_b = x.cum_sum().over(PEERS)
    if agg == "sum":
        return s_a + s_b
    if agg == "mean":
        return (s_a + s_b) / (n_a + k)
    if agg in ("max", "min"):
        part = getattr(x, f"rolling_{agg}_by")(TIME, size, closed="none").over(USER)
        peers = getattr(x, f"cum_{agg}")().over(PEERS)
        return getattr(pl, f"{agg}_horizontal")(part, peers)
    if agg == "std":
        mean_a = x.rolling_mean_by(TIME, size, closed="none").over(USER).fill_null(0.0)
        var_a = x.rolling_var_by(TIME, size, closed="none", ddof=0).over(USER).fill_null(0.0)
        ref = x.first().over(PEERS)
        d = x - ref
        mean_d = d.cum_sum().over(PEERS) / k
        var_b = ((d * d).cum_sum().over(PEERS) / k - mean_d * mean_d).clip(lower_bound=0.0)
        mean_b = ref + mean_d
        n = n_a + k
        delta = mean_b - mean_a
        var = (n_a * var_a + k * var_b + n_a * k / n * delta * delta) / n
        return var.sqrt()
    raise ValueError(f"no Polars construction for {agg!r}")


def main(argv: list[str]) -> None:
    source, output, specs_json = argv
    specs = json.loads(specs_json)
    df = (
        pl.read_parquet(source)
        .with_row_index("arr")
        .with_columns(one=pl.lit(1.0))
        .sort([USER, TIME, "arr"])
    )
    exprs: list[pl.Expr] = []
    for name, agg, column, window in specs:
        if agg == "since_last":
            gap = (pl.col(TIME) - pl.col(TIME).shift(1)).over(USER) / 1000.0
            exprs.append(gap.fill_null(-1.0).alias(name))
        elif agg == "ewm_mean":
            wt = (2.0 ** ((pl.col(TIME) - pl.col(TIME).first()) / float(window))).over(USER)
            num = (pl.col(column) * wt).cum_sum().over(USER)
            exprs.append((num / wt.cum_sum().over(USER)).alias(name))
        elif agg == "distinct":
            rolled = df.rolling(
                index_column=TIME, period=f"{window}i", closed="none", group_by=USER
            )
            parts = rolled.agg(pl.col(column).n_unique().alias("part"))
            if not parts[USER].equals(df[USER]) or not parts[TIME].equals(df[TIME]):
                raise RuntimeError("rolling group-by rows are not in the frame's order")
            part = parts["part"]
            # previous occurrence of the row's merchant (same user), as its own column: an
            # ``over`` nested in another ``over`` would see only the outer partition's rows
            prev = pl.col(TIME).shift(1).over([USER, column])
            new = (prev.is_null() | (prev != pl.col(TIME))) & (
                prev.is_null() | (prev <= pl.col(TIME) - window)
            )
            df = df.with_columns(part.alias(f"_part_{name}"), new.alias(f"_new_{name}"))
            peers = pl.col(f"_new_{name}").cast(pl.Int64).cum_sum().over(PEERS)
            exprs.append((pl.col(f"_part_{name}").cast(pl.Int64) + peers).alias(name))
        else:
            exprs.append(_window_exprs(agg, column, int(window)).alias(name))
    out = df.with_columns(exprs).sort("arr")
    out = out.select(
        "event_id",
        USER,
        pl.col(TIME).cast(pl.Datetime("ms", "UTC")).alias("event_timestamp"),
        *[name for name, *_ in specs],
    )
    out.write_parquet(output)


if __name__ == "__main__":
    main(sys.argv[1:])
