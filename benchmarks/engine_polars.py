"""The backfill features in Polars: events parquet in, features parquet out.

Run as a script (``python benchmarks/engine_polars.py IN OUT SPECS_JSON``) so that its process
imports Polars and nothing of featflow: ``backfill_vs_engines`` times the whole process.
SPECS_JSON is ``features.spec.spec_fingerprint(benchmarks._common.ENGINE_FEATURES)``.

Semantics as featflow's kernels (features/kernels/driver.py) for in-order input: a row's window is
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
# An ``over`` nested in another ``over`` is evaluated within each outer partition (slow,
# and wrong when the partitions differ), so every windowed intermediate is its own column,
# built in stages: per-row inputs, then window/cumulative parts, then plain arithmetic.


def _rolling(agg: str, column: str, w: int) -> pl.Expr:
    """``agg`` of ``column`` over the user's rows in ``(t - w, t)`` (null when empty)."""
    x = pl.col(column)
    size = f"{w}i"
    if agg == "var":
        return x.rolling_var_by(TIME, size, closed="none", ddof=0).over(USER)
    return getattr(x, f"rolling_{agg}_by")(TIME, size, closed="none").over(USER)


def main(argv: list[str]) -> None:
    source, output, specs_json = argv
    specs = json.loads(specs_json)
    df = (
        pl.read_parquet(source)
        .with_row_index("arr")
        .with_columns(one=pl.lit(1.0))
        .sort([USER, TIME, "arr"])
    )
    t = pl.col(TIME)
    # stage 1: per-row inputs
    first: dict[str, pl.Expr] = {
        "k": pl.col("one").cum_sum().over(PEERS),  # rank among the row's peers, from 1
        "ref": pl.col("amount").first().over(PEERS),
        "t0": t.first().over(USER),
    }
    for _, agg, column, *_ in specs:
        if agg == "distinct":  # previous occurrence of the row's merchant (same user)
            first[f"prev_{column}"] = t.shift(1).over([USER, column])
    df = df.with_columns(**first)
    # stage 2: window and cumulative parts
    parts: dict[str, pl.Expr] = {
        "d": pl.col("amount") - pl.col("ref"),
        "s_b": pl.col("amount").cum_sum().over(PEERS),
        "max_b": pl.col("amount").cum_max().over(PEERS),
        "min_b": pl.col("amount").cum_min().over(PEERS),
        "gap": ((t - t.shift(1)).over(USER) / 1000.0).fill_null(-1.0),
    }
    final: dict[str, pl.Expr] = {}
    later: dict[str, pl.Expr] = {}
    for name, agg, column, window, *_ in specs:
        w = int(window) if window is not None else 0
        if agg == "since_last":
            final[name] = pl.col("gap")
        elif agg == "ewm_mean":
            wt = 2.0 ** ((t - pl.col("t0")) / float(w))
            parts[f"num_{name}"] = (pl.col(column) * wt).cum_sum().over(USER)
            parts[f"den_{name}"] = wt.cum_sum().over(USER)
            final[name] = pl.col(f"num_{name}") / pl.col(f"den_{name}")
        elif agg == "distinct":
            rolled = df.rolling(index_column=TIME, period=f"{w}i", closed="none", group_by=USER)
            got = rolled.agg(pl.col(column).n_unique().alias("part"))
            if not got[USER].equals(df[USER]) or not got[TIME].equals(df[TIME]):
                raise RuntimeError("rolling group-by rows are not in the frame's order")
            df = df.with_columns(got["part"].cast(pl.Int64).alias(f"part_{name}"))
            # a peer adds its merchant when first among the peers and absent from (t - w, t)
            prev = pl.col(f"prev_{column}")
            parts[f"new_{name}"] = (
                (prev.is_null() | (prev != t)) & (prev.is_null() | (prev <= t - w))
            ).cast(pl.Int64)
            later[f"newk_{name}"] = pl.col(f"new_{name}").cum_sum().over(PEERS)
            final[name] = pl.col(f"part_{name}") + pl.col(f"newk_{name}")
        else:
            parts[f"n_{w}"] = _rolling("sum", "one", w).fill_null(0.0)
            n_a, k = pl.col(f"n_{w}"), pl.col("k")
            if agg == "count":
                final[name] = (n_a + k).cast(pl.Int64)
                continue
            parts[f"s_{w}"] = _rolling("sum", column, w).fill_null(0.0)
            total = pl.col(f"s_{w}") + pl.col("s_b")
            if agg == "sum":
                final[name] = total
            elif agg == "mean":
                final[name] = total / (n_a + k)
            elif agg in ("max", "min"):
                parts[f"{agg}_{w}"] = _rolling(agg, column, w)
                pick = getattr(pl, f"{agg}_horizontal")
                final[name] = pick(pl.col(f"{agg}_{w}"), pl.col(f"{agg}_b"))
            elif agg == "std":
                # Chan et al.: (t - w, t) and the peers up to the row, shifted by ``ref``
                parts[f"mean_{w}"] = _rolling("mean", column, w).fill_null(0.0)
                parts[f"var_{w}"] = _rolling("var", column, w).fill_null(0.0)
                later["sd_b"] = pl.col("d").cum_sum().over(PEERS)
                later["sdd_b"] = (pl.col("d") * pl.col("d")).cum_sum().over(PEERS)
                mean_d = pl.col("sd_b") / k
                var_b = (pl.col("sdd_b") / k - mean_d * mean_d).clip(lower_bound=0.0)
                delta = pl.col("ref") + mean_d - pl.col(f"mean_{w}")
                n = n_a + k
                var = (n_a * pl.col(f"var_{w}") + k * var_b + n_a * k / n * delta * delta) / n
                final[name] = var.sqrt()
            else:
                raise ValueError(f"no Polars construction for {agg!r}")
    df = df.with_columns(**parts).with_columns(**later)
    out = df.with_columns(**final).sort("arr")
    out = out.select(
        "event_id",
        USER,
        t.cast(pl.Datetime("ms", "UTC")).alias("event_timestamp"),
        *[name for name, *_ in specs],
    )
    out.write_parquet(output)


if __name__ == "__main__":
    main(sys.argv[1:])
