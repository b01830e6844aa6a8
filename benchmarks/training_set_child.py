"""The measured processes of ``benchmarks/training_set.py``, each run in a fresh interpreter.

    python -m benchmarks.training_set_child build OFFLINE_DIR LABELS.parquet REPORT.json [SAVE]
    python -m benchmarks.training_set_child feast FEATURE_REPO ENTITY.parquet REPORT.json [SAVE]
    python -m benchmarks.training_set_child train REPORT.json FEATFLOW_ARGS...

``build``: read the labels, ``inference.train.training_set_by_event`` on the offline dir.
``feast``: read the entity rows (user_id, event_timestamp, label, event_id), Feast's
``get_historical_features(...).to_df()`` over the applied repo (the call the Feast oracle of
``tests/inference/feast_training.py`` makes), then drop rows without features as it does.
``train``: ``featflow.cli:run`` (what the ``featflow`` console script calls) with the given
arguments, the stages of ``inference.workflow.train_and_register`` timed by wrappers around
the functions it calls (read events, backfill, offline write, training-set build, train(),
and within it the model fit); the report is rewritten after every stage,
since the CLI may leave by ``os._exit``.

Nothing but the standard library is imported before the step, so the parent's wall time and
peak RSS of the process are those of the step with exactly the imports it needs. ``SAVE``
(a parquet path) keeps the rows for the parent's agreement check, after the step is timed.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

T0 = time.perf_counter()


def _peak_mb() -> float:
    """This process's peak RSS (MiB) since it was exec'd (VmHWM: ru_maxrss would carry the
    parent's resident memory at the fork)."""
    try:
        text = Path("/proc/self/status").read_text()
        return int(text.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _dump(path: str, report: dict[str, Any]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(path)


def build(offline_dir: str, labels_path: str, out: str, save: str | None = None) -> None:
    import pandas as pd

    from inference.train import training_set_by_event

    labels = pd.read_parquet(labels_path)
    before = _peak_mb()
    start = time.perf_counter()
    data = training_set_by_event(Path(offline_dir), labels)
    call_s = time.perf_counter() - start
    report = {
        "rows": len(data.label),
        "call_s": call_s,
        "ready_s": start - T0,
        "peak_mb_before_call": before,
        "peak_mb": _peak_mb(),
    }
    if save:
        from features.scoring_row import SCORING_FEATURES

        frame = pd.DataFrame(data.features, columns=list(SCORING_FEATURES))
        frame["label"], frame["user_id"] = data.label, data.entity
        frame["event_timestamp"] = data.event_time
        frame.to_parquet(save)
    _dump(out, report)


def feast(repo: str, entity_path: str, out: str, save: str | None = None) -> None:
    """The same training set through Feast: the user view at each event's time, then each
    merchant view one millisecond before it (Feast takes rows at or before a time)."""
    import pandas as pd
    from feast import FeatureStore

    from features.feast_repo import FEATURE_VIEW
    from features.spec import FEATURE_NAMES
    from features.views import MERCHANT_VIEWS

    store = FeatureStore(repo_path=repo)
    entity_df = pd.read_parquet(entity_path)
    entity_df["row"] = range(len(entity_df))
    refs = [f"{FEATURE_VIEW}:{name}" for name in FEATURE_NAMES]
    before = _peak_mb()
    start = time.perf_counter()
    frame = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    frame = frame.dropna(subset=list(FEATURE_NAMES))
    merchants = frame[["row", "merchant_id", "event_timestamp"]].copy()
    merchants["event_timestamp"] -= pd.Timedelta(milliseconds=1)
    for view in MERCHANT_VIEWS:  # one at a time: Feast drops a row either view lacks
        refs = [f"{view.name}:{s.name}" for s in view.specs]
        found = store.get_historical_features(entity_df=merchants, features=refs).to_df()
        found = found.drop(columns=["merchant_id", "event_timestamp"])
        frame = frame.merge(found, on="row", how="left")
    call_s = time.perf_counter() - start
    report = {
        "rows": len(frame),
        "call_s": call_s,
        "ready_s": start - T0,
        "peak_mb_before_call": before,
        "peak_mb": _peak_mb(),
    }
    if save:
        frame.reset_index(drop=True).to_parquet(save)
    _dump(out, report)


def train(out: str, args: list[str]) -> None:
    import features.backfill
    import features.event_files
    import features.offline
    import inference.train

    report: dict[str, Any] = {"stages": []}

    def timed(name: str, fn: Callable[..., Any], within: str | None = None) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                end = time.perf_counter()
                report["stages"].append(
                    {
                        "stage": name,
                        "within": within,
                        "start_s": start - T0,
                        "s": end - start,
                        "peak_mb": _peak_mb(),
                    }
                )
                _dump(out, report)

        return wrapper

    # train_and_register imports these inside its body, so it finds the wrappers.
    features.event_files.read_events = timed("read events", features.event_files.read_events)
    features.backfill.backfill = timed("backfill", features.backfill.backfill)
    writer = features.offline.OfflineWriter
    writer.write = timed("write offline", writer.write)  # type: ignore[method-assign]
    inference.train.training_set_by_event = timed(
        "build training set", inference.train.training_set_by_event
    )
    fit_stage = "train(): fit, ONNX export and check, metrics"
    inference.train.fit_model = timed("fit_model (the trees)", inference.train.fit_model,
                                      within=fit_stage)  # fmt: skip
    inference.train.train = timed(fit_stage, inference.train.train)
    report["ready_s"] = time.perf_counter() - T0
    _dump(out, report)

    from featflow.cli import run

    sys.argv = ["featflow", *args]
    run()


def main(argv: list[str]) -> None:
    step, *rest = argv
    if step == "build":
        build(*rest)
    elif step == "feast":
        feast(*rest)
    elif step == "train":
        train(rest[0], rest[1:])
    else:
        raise SystemExit(f"unknown step {step!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
