"""Predict latency in-process: featflow's read + score vs Feast ``get_online_features``.

Why: ``/predict`` must answer within 1 ms (p99) before HTTP, and cost no more than 1.5x
what Feast alone needs to read the same feature row. How: one Redis online store
(embedded, 127.0.0.1) holds ``--users`` rows written with ``open_online``; a
GradientBoostingClassifier(150 trees, depth 3), trained on random data over the default
features and exported like ``inference/train.py`` does, is registered and promoted. Then,
in this one process, each of ``--n`` iterations picks a random user and times (in a
shuffled order, so the four share the machine's noise and none always runs first):

  A  Feast ``store.get_online_features`` of the user's row, then of its merchant's two
     merchant views (+ ``to_dict()``): the same rows through Feast
  B  featflow's predict path = ``reader.read([u])`` + ``merchants.read(its merchant)`` +
     the scoring row + ``predictor.score(row)``
  C  ``reader.read([u])`` + ``merchants.read`` alone
  D  ``predictor.score(row)`` alone (ONNX Runtime, 1 thread)

B is what ``POST /predict`` does minus HTTP, validation and building the response.
Latencies use ``perf_counter_ns``; the garbage collector stays on, as in the server.

    python -m benchmarks.predict_latency [--n 5000] [--users 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks._common import header, scratch_dir, verdict
from featflow.settings import Settings
from features.feast_repo import FEATURE_VIEW, JOIN_KEY, apply_repo, feast_type_name
from features.online import open_online
from features.scoring_row import SCORING_FEATURES, MerchantReader, merchants_of, scoring_rows
from features.spec import DEFAULT_FEATURES, FEATURE_NAMES
from features.views import MERCHANT_VIEWS
from inference.predictor import Predictor
from inference.registry import ModelRegistry
from infra.redis_server import embedded_redis

if TYPE_CHECKING:
    from feast import FeatureStore

TARGET_P99_US = 1000.0
TARGET_RATIO = 1.5
FEATURE_REFS = [f"{FEATURE_VIEW}:{name}" for name in FEATURE_NAMES]
MERCHANT_REFS = [f"{v.name}:{s.name}" for v in MERCHANT_VIEWS for s in v.specs]
MERCHANTS = 50  # users' merchant ids are 1..49; merchants 1..MERCHANTS have rows
EVENT_TIME_MS = 1_767_225_600_000


def populate(settings: Settings, users: int, seed: int) -> tuple[FeatureStore, np.ndarray]:
    """Apply the repo, write one feature row per user (ids 1..users) and per merchant,
    register a champion.

    Returns the store and the user ids. Shared with ``benchmarks.http_load``.
    """
    store = apply_repo(settings.stores)
    rng = np.random.default_rng(seed)
    ids = np.arange(1, users + 1, dtype=np.int64)
    features = rng.normal(10, 5, size=(users, len(FEATURE_NAMES)))
    for j, spec in enumerate(DEFAULT_FEATURES):
        if feast_type_name(spec) == "Int64":
            features[:, j] = rng.integers(1, 50, size=users)
    writer = open_online(store, DEFAULT_FEATURES)
    for lo in range(0, users, 5000):
        hi = min(lo + 5000, users)
        writer.write(
            entity_id=ids[lo:hi],
            event_time_ms=np.full(hi - lo, EVENT_TIME_MS, dtype=np.int64),
            features=features[lo:hi],
        )
    merchants = np.arange(1, MERCHANTS + 1, dtype=np.int64)
    for view in MERCHANT_VIEWS:
        open_online(store, view.specs, view=view).write(
            entity_id=merchants,
            event_time_ms=np.full(MERCHANTS, EVENT_TIME_MS, dtype=np.int64),
            features=rng.integers(0, 100, size=(MERCHANTS, len(view.specs))).astype(float),
        )
    registry = ModelRegistry(settings.stores.models_dir)
    version = registry.register(train_model(seed), {"feature_names": SCORING_FEATURES}).version
    registry.promote(version, SCORING_FEATURES)
    return store, ids


def train_model(seed: int, rows: int = 3000) -> bytes:
    """A 150-tree depth-3 GradientBoostingClassifier as float32 ONNX (zipmap off)."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(seed + 1)
    x = rng.normal(10, 5, size=(rows, len(SCORING_FEATURES))).astype(np.float32)
    signal = x[:, 0] - x[:, 3] + 0.5 * x[:, 7] + rng.normal(scale=4.0, size=rows)
    y = (signal > np.median(signal)).astype(int)
    model = GradientBoostingClassifier(n_estimators=150, max_depth=3, random_state=seed)
    model.fit(x, y)
    onx = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17)
    return onx.SerializeToString()


def summarize(ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """p50/p99/max/mean in microseconds."""
    us = np.asarray(ns, dtype=np.float64) / 1000.0
    return {
        "p50": float(np.percentile(us, 50)),
        "p99": float(np.percentile(us, 99)),
        "max": float(us.max()),
        "mean": float(us.mean()),
    }


def markdown_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A GitHub markdown table; floats get 1 decimal (or 2 below 10)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 10 else f"{v:,.1f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def measure(store: FeatureStore, settings: Settings, ids: np.ndarray, n: int, seed: int) -> str:
    """Time A-D ``n`` times each, interleaved; returns the markdown report."""
    predictor = Predictor(ModelRegistry(settings.stores.models_dir), SCORING_FEATURES)
    if not predictor.refresh():
        raise RuntimeError(f"no champion loaded: {predictor.last_error}")
    reader = open_online(store, DEFAULT_FEATURES)
    merchants = MerchantReader(store)
    user_row, found = reader.read([int(ids[0])])
    assert found.all(), "benchmark user has no stored row"
    row = scoring_rows(user_row, merchants.read(merchants_of(user_row)))

    feast_row: dict[str, Any] = {}

    def feast_read(u: int) -> None:
        out = store.get_online_features(
            features=FEATURE_REFS, entity_rows=[{JOIN_KEY: u}]
        ).to_dict()
        merchant = store.get_online_features(
            features=MERCHANT_REFS, entity_rows=[{"merchant_id": out["merchant_id"][0]}]
        ).to_dict()
        feast_row.update(out)
        feast_row.update(merchant)

    def rows_of(u: int) -> np.ndarray:
        features, _ = reader.read([u])
        return scoring_rows(features, merchants.read(merchants_of(features)))

    def predict(u: int) -> None:
        predictor.score(rows_of(u))

    def read(u: int) -> None:
        rows_of(u)

    def score(_: int) -> None:
        predictor.score(row)

    # Same values both ways, or the comparison means nothing.
    u0 = int(ids[len(ids) // 2])
    feast_read(u0)
    feast_values = [feast_row[name][0] for name in SCORING_FEATURES]
    np.testing.assert_array_equal(rows_of(u0)[0], np.asarray(feast_values, dtype=np.float64))

    variants: dict[str, Callable[[int], None]] = {
        "A feast get_online_features": feast_read,
        "B featflow read + score": predict,
        "C featflow reads (user, merchant)": read,
        "D ONNX score": score,
    }
    names = list(variants)
    fns = [variants[k] for k in names]
    rng = np.random.default_rng(seed + 2)
    warm = 300
    users = rng.choice(ids, size=n + warm).tolist()
    orders = [rng.permutation(len(fns)).tolist() for _ in range(n + warm)]
    times: list[list[int]] = [[] for _ in fns]
    clock = time.perf_counter_ns
    started = time.monotonic()
    for i in range(n + warm):
        u = users[i]
        for k in orders[i]:
            t0 = clock()
            fns[k](u)
            dt = clock() - t0
            if i >= warm:
                times[k].append(dt)
    elapsed = time.monotonic() - started

    stats = {name: summarize(times[k]) for k, name in enumerate(names)}
    a, b = stats[names[0]], stats[names[1]]
    rows = [[name, s["p50"], s["p99"], s["max"], s["mean"]] for name, s in stats.items()]
    report = [
        f"{n:,} calls per variant, interleaved in shuffled order, {len(ids):,} users in Redis "
        f"({elapsed:.0f} s)",
        "",
        markdown_table(rows, ["variant (single user)", "p50 us", "p99 us", "max us", "mean us"]),
        "",
        markdown_table(
            [
                ["B / A", b["p50"] / a["p50"], b["p99"] / a["p99"], b["mean"] / a["mean"]],
                [
                    "(C + D) / B",
                    (stats[names[2]]["p50"] + stats[names[3]]["p50"]) / b["p50"],
                    "",
                    (stats[names[2]]["mean"] + stats[names[3]]["mean"]) / b["mean"],
                ],
            ],
            ["ratio", "p50", "p99", "mean"],
        ),
    ]
    print("\n".join(report), flush=True)
    verdict("predict in-process p99 (us)", b["p99"], TARGET_P99_US, higher_is_better=False)
    verdict(
        "predict p99 / Feast get_online_features p99",
        b["p99"] / a["p99"],
        TARGET_RATIO,
        higher_is_better=False,
    )
    return "\n".join(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="timed calls per variant")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    header(
        "predict latency (in-process, Redis)",
        "\n\n".join(__doc__.split("\n\n")[1:3])
        + f"\n--n {args.n} --users {args.users} --seed {args.seed}",
    )
    with scratch_dir("predict") as scratch, embedded_redis(log_path=scratch / "redis.log") as rd:
        settings = Settings(
            home=Path(scratch) / "home", online_store=f"redis://127.0.0.1:{rd.port}"
        )
        store, ids = populate(settings, args.users, args.seed)
        measure(store, settings, ids, args.n, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
