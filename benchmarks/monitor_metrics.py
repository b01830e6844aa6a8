"""Monitoring metrics: featflow's quality window beside river, its drift window beside Evidently.

Quality: ``--pairs`` labelled predictions (scores ~ Beta(2, 5), labels Bernoulli(score)) go
through a window of the latest ``--window`` pairs, with a snapshot of every metric each
``--snapshot-every`` pairs (the monitor's snapshot interval). featflow:
``monitoring.quality.QualityWindow`` fed one pair per call (like river) and in batches of
500 (as the monitor joins them per poll), ``metrics()`` at each snapshot (exact AUC, log
loss, Brier, ECE, positive rate, mean score). river: ``utils.Rolling`` over ``ROCAUC``
(river's default, 10 thresholds), ``LogLoss`` and ``MSE`` (the Brier score on
probabilities), updated per pair and read at each snapshot: three metrics to featflow's six.
At the end both are compared with scikit-learn on the final window.

Drift: one snapshot of every default feature and the score over a window of ``--window``
predictions, against reference histograms built as the trainer builds them
(``inference.reference.histogram``: quantile edges from 20,000 training rows). Features are the
kernels' own output over generated events (Zipf users: many ties), the current window
drawn after the amounts shift by 1.3x. featflow: ``DriftWindow`` fed the window's raw rows
then ``metrics()`` (PSI, KS, JS per column): what a monitor restarted from nothing pays; and
``metrics()`` alone, what each snapshot of a running monitor pays (counts kept up to date
per prediction). Evidently: ``Report([DataDriftPreset(num_method="psi")]).run(current,
reference)`` on the same raw rows. Same bins, same value: Evidently's PSI of the bin
numbers (its value-count branch) equals featflow's PSI, compared to 1e-9.

    python -m benchmarks.monitor_metrics [--pairs 200000] [--window 5000]
        [--snapshot-every 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from benchmarks._common import header, make_events, table, verdict, warm_up_kernels
from features.spec import DAY_MS, DEFAULT_FEATURES, DEFAULT_LATENESS_MS, FEATURE_NAMES
from features.state import WindowState
from inference.reference import histogram
from monitoring.drift import DriftWindow, Reference, drift
from monitoring.quality import QualityWindow

TARGETS = {"river": 10.0, "evidently": 100.0}  # from the issue: x faster
BATCH = 500


def quality_featflow(scores, labels, window, every, batch) -> tuple[float, dict[str, float]]:
    """Seconds for all pairs through a QualityWindow (``batch`` pairs a call), snapshots."""
    w = QualityWindow(size=window)
    start = time.perf_counter()
    last: dict[str, float] = {}
    if batch == 1:
        for i in range(len(scores)):
            w.add(scores[i], labels[i])
            if (i + 1) % every == 0:
                last = w.metrics()
    else:
        for lo in range(0, len(scores), batch):
            w.add_many(scores[lo : lo + batch], labels[lo : lo + batch])
            if (lo + batch) % every == 0:
                last = w.metrics()
    return time.perf_counter() - start, last


def quality_river(scores, labels, window, every) -> tuple[float, dict[str, float]]:
    """Seconds for all pairs through river's rolling ROCAUC, LogLoss and MSE, snapshots."""
    from river import metrics, utils

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        rolling = {
            "auc": utils.Rolling(metrics.ROCAUC(), window_size=window),
            "log_loss": utils.Rolling(metrics.LogLoss(), window_size=window),
            "brier": utils.Rolling(metrics.MSE(), window_size=window),
        }
    ys, ps = labels.tolist(), scores.tolist()
    last: dict[str, float] = {}
    start = time.perf_counter()
    for i in range(len(ys)):
        y, p = ys[i], ps[i]
        rolling["auc"].update(y == 1, p)
        rolling["log_loss"].update(y == 1, p)
        rolling["brier"].update(y, p)
        if (i + 1) % every == 0:
            last = {k: m.get() for k, m in rolling.items()}
    return time.perf_counter() - start, last


def feature_frames(window: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference 20,000 rows, current ``window`` rows) of the default features + a score."""

    def features(amount_scale: float, s: int) -> pd.DataFrame:
        ev = make_events(
            40_000, users=2_000, start_ms=1_767_225_600_000, span_ms=2 * DAY_MS,
            activity="zipf", seed=s, zipf=1.5,
        )  # fmt: skip
        state = WindowState(DEFAULT_FEATURES, lateness_ms=DEFAULT_LATENESS_MS)
        res = state.update(ev.user_id, ev.event_time_ms, ev.amount * amount_scale, ev.merchant_id)
        frame = pd.DataFrame(res.features[-20_000:], columns=list(FEATURE_NAMES))
        logit = (np.log1p(frame["amount_mean_24h"]) - 3.0) / 2
        frame["score"] = 1 / (1 + np.exp(-logit))
        return frame

    return features(1.0, seed), features(1.3, seed + 1).tail(window).reset_index(drop=True)


def drift_featflow(refs, current: pd.DataFrame, window: int) -> tuple[float, float, dict]:
    """(seconds from raw rows, seconds of a snapshot from kept counts, the metrics)."""
    start = time.perf_counter()
    w = DriftWindow(refs, size=window)
    w.add_many({name: current[name].to_numpy() for name in refs}, np.arange(len(current)))
    values = w.metrics()
    from_raw = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(100):
        w.metrics()
    return from_raw, (time.perf_counter() - start) / 100, values


def drift_evidently(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[float, object]:
    """Seconds of one Evidently data-drift report (PSI per column) on the raw rows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Evidently's own deprecation warnings, on import too
        from evidently import Report
        from evidently.presets import DataDriftPreset

        start = time.perf_counter()
        snapshot = Report([DataDriftPreset(num_method="psi")]).run(current, reference)
        return time.perf_counter() - start, snapshot


def evidently_psi_on_bins(ref_bins: np.ndarray, cur_bins: np.ndarray) -> float:
    """Evidently's PSI of two samples of bin numbers (its value-count branch)."""
    from evidently.legacy.calculations.stattests.psi import psi_stat_test
    from evidently.legacy.core import ColumnType

    value, _ = psi_stat_test.func(
        pd.Series(ref_bins), pd.Series(cur_bins), ColumnType.Numerical, 0.1
    )
    return float(value)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--window", type=int, default=5000)
    parser.add_argument("--snapshot-every", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="best of N per side")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    every = args.snapshot_every - args.snapshot_every % BATCH or BATCH
    header(
        "monitor_metrics: quality vs river, drift vs Evidently",
        f"""
quality: {args.pairs:,} pairs, window {args.window:,}, a snapshot every {every:,} pairs;
  featflow QualityWindow (6 exact metrics) per pair and in batches of {BATCH};
  river utils.Rolling(ROCAUC, LogLoss, MSE) per pair; best of {args.repeats}; values vs
  scikit-learn on the final window
drift: {len(FEATURE_NAMES)} features + score, window {args.window:,}, reference 20,000 rows
  (inference.reference.histogram); featflow DriftWindow from raw rows, and one snapshot from its
  kept counts; Evidently Report([DataDriftPreset(num_method="psi")]) on the raw rows;
  best of {args.repeats}""",
    )
    rng = np.random.default_rng(args.seed)
    scores = rng.beta(2, 5, args.pairs)
    labels = (rng.random(args.pairs) < scores).astype(np.int64)

    runs = {"featflow, one pair a call": [], f"featflow, {BATCH} pairs a call": [], "river": []}
    for _ in range(args.repeats):
        t1, ours = quality_featflow(scores, labels, args.window, every, 1)
        tb, _ = quality_featflow(scores, labels, args.window, every, BATCH)
        tr, theirs = quality_river(scores, labels, args.window, every)
        runs["featflow, one pair a call"].append(t1)
        runs[f"featflow, {BATCH} pairs a call"].append(tb)
        runs["river"].append(tr)
    s_last, y_last = scores[-args.window :], labels[-args.window :]
    truth = {
        "auc": roc_auc_score(y_last, s_last),
        "log_loss": log_loss(y_last, s_last, labels=[0, 1]),
        "brier": brier_score_loss(y_last, s_last),
    }
    best = {k: min(v) for k, v in runs.items()}
    print()
    table(
        [(k, args.pairs / t, best["river"] / t) for k, t in best.items()],
        ["quality window", "pairs/s (best)", "x river"],
    )
    print()
    table(
        [(m, truth[m], abs(ours[m] - truth[m]), abs(theirs[m] - truth[m])) for m in truth],
        ["final window", "scikit-learn", "|featflow - sklearn|", "|river - sklearn|"],
    )

    warm_up_kernels()
    reference, current = feature_frames(args.window, args.seed)
    refs = {name: Reference.of(histogram(reference[name].to_numpy())) for name in reference}
    raw_s, kept_s, evid_s = [], [], []
    for _ in range(args.repeats):
        a, b, values = drift_featflow(refs, current, args.window)
        raw_s.append(a)
        kept_s.append(b)
        evid_s.append(drift_evidently(reference, current)[0])
    gaps = []
    for name, ref in refs.items():
        ref_bins = ref.bin_of(reference[name].to_numpy())
        cur_bins = ref.bin_of(current[name].to_numpy())
        ours_psi = drift(np.bincount(ref_bins, minlength=ref.n_bins),
                         np.bincount(cur_bins, minlength=ref.n_bins))["psi"]  # fmt: skip
        gaps.append(abs(ours_psi - evidently_psi_on_bins(ref_bins, cur_bins)))
    print()
    table(
        [
            ("featflow, window from raw rows + snapshot", min(raw_s), min(evid_s) / min(raw_s)),
            ("featflow, snapshot from kept counts", min(kept_s), min(evid_s) / min(kept_s)),
            ("Evidently DataDriftPreset (psi)", min(evid_s), 1.0),
        ],
        ["one drift snapshot", "seconds (best)", "x faster than Evidently"],
    )
    worst = max(values, key=lambda n: values[n]["psi"])
    print(
        f"\nlargest PSI: {worst} {values[worst]['psi']:.3f}; PSI on the same bins, featflow vs"
        f" Evidently: largest |difference| {max(gaps):.2e} over {len(gaps)} columns"
    )
    print()
    river_x = best["river"] / best[f"featflow, {BATCH} pairs a call"]
    verdict("quality updates/s vs river (batched, as the monitor feeds it)", river_x,
            TARGETS["river"])  # fmt: skip
    evid_x = min(evid_s) / min(raw_s)
    verdict("drift snapshot vs Evidently (from raw rows)", evid_x, TARGETS["evidently"])
    per_pair = best["river"] / best["featflow, one pair a call"]
    return {"river_x": river_x, "river_x_per_pair": per_pair, "evidently_x": evid_x}


if __name__ == "__main__":
    main()
