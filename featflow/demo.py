"""``featflow demo``: the whole loop on embedded defaults, told as a story.

1. A Tansu broker (unless ``FEATFLOW_KAFKA_BOOTSTRAP`` names one), then the services as
   processes, as a user runs them: ``worker`` (stream scoring on), ``monitor``, ``trainer``
   (shadow trials on) and ``serve``.
2. Warm-up: 26 hours of events and their labels; a first retraining request makes the
   trainer train the first champion on it.
3. Live: events stream at a steady rate (event time runs faster than the wall clock) and
   labels follow a few minutes of event time late; ``/predict`` is asked all along.
   Part-way through, the world changes: amounts grow (a covariate shift) and the fraud
   rule moves (a concept drift). The monitor's drift and quality rules fire; the trainer
   waits for labels of the changed world, trains a challenger, judges it against the
   champion on the same holdout, trials it in shadow on the same live events, promotes it,
   and live quality recovers. The stream runs on for a while after the promotion.
4. A summary, and an HTML report, ``$FEATFLOW_HOME/reports/demo.html``.

Progress shows while it runs (rich). The generator knows each event's true fraud
probability, so the demo also reports the best AUC any model could reach on the same
events, before and after the change.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click
import numpy as np

from featflow.settings import Settings

POLICY = """\
# The demo's retraining policy (featflow monitor reads it from FEATFLOW_MONITOR_POLICY).
# Per-feature PSI is left out on purpose: on this skewed stream the busiest user holds
# ~17 % of the events, and its own features moving (a new largest amount, a count that
# grows) moves a feature's PSI past 0.25 in a stable world. The score's PSI and live AUC
# move only when the world does.
rules:
  - {metric: psi, feature: score, above: 0.8}  # the scores moved far from the reference
  - {metric: auc, below: 0.58}                 # live AUC fell under what this world allows
min_labelled: 1000
min_predictions: 1500
consecutive: 3
cooldown_s: 600
"""


@dataclass(frozen=True)
class Plan:
    """The story's sizes: events, users and pace."""

    # events before the live stream: 26 h of event time, so that every 24 h window is full
    # when the first model trains (a shorter warm-up would make 24 h features drift by
    # themselves as their windows fill)
    warmup: int = 190_000
    live: int = 160_000  # live events at most (the stream ends earlier once recovered)
    change_after: int = 30_000  # live events before the world changes
    after_promotion: int = 30_000  # live events to stream once the challenger is promoted
    users: int = 2_000
    rate: float = 1_000.0  # live events per wall-clock second
    gap_ms: float = 500.0  # event time between events (so 1,000 events/s is 500x real time)
    label_delay_ms: int = 300_000  # labels arrive up to this much event time after the event
    seed: int = 7

    def scaled(self, factor: float) -> Plan:
        """The same story with ``factor`` times the events (and the same pace)."""
        return Plan(
            int(self.warmup * factor), int(self.live * factor), int(self.change_after * factor),
            int(self.after_promotion * factor), self.users, self.rate, self.gap_ms,
            self.label_delay_ms, self.seed,
        )  # fmt: skip


def demo_settings(settings: Settings, home: Path, bootstrap: str) -> Settings:
    """The services' settings for the story: short snapshots, windows a demo fills, shadow
    trials on, training on the changed world's labels."""
    return settings.model_copy(
        update={
            "home": home,
            "kafka_bootstrap": bootstrap,
            "checkpoint_interval_s": 1.0,
            "stream_scoring": True,
            "monitor_interval_s": 2.0,
            "monitor_window_labels": 10_000,
            "monitor_window_events": 2000,
            "monitor_horizon_s": 3600.0,
            "monitor_policy": home / "policy.yaml",
            "trainer_shadow": True,
            # one look at the live comparison, on 8,000 paired labelled events or more
            "trainer_shadow_min_labels": 8000,
            "trainer_shadow_timeout_s": 120.0,
            # train on 3 h of event time ending 20,000 labelled events after the firing:
            # mostly the changed world, with a holdout of ~4,000 events for the gate
            "trainer_min_new_labels": 20_000,
            "trainer_history_s": 10_800.0,
            "trainer_label_wait_s": 120.0,
        }
    )


class Stream:
    """The generated world: events, labels, the true probability, and send bookkeeping."""

    def __init__(self, plan: Plan, now_ms: int) -> None:
        from streams.generator import fraud_probability, generate_events, generate_outcomes

        total = plan.warmup + plan.live
        span = total * plan.gap_ms
        self.start_ms = now_ms - int(span) - 3_600_000  # ends an hour before now
        self.change_ms = self.start_ms + int((plan.warmup + plan.change_after) * plan.gap_ms)
        self.events = generate_events(
            total, users=plan.users, start_ms=self.start_ms, mean_gap_ms=plan.gap_ms,
            seed=plan.seed, change_ms=self.change_ms, amount_factor=1.8,
        )  # fmt: skip
        self.outcomes = generate_outcomes(
            self.events, label_delay_ms=plan.label_delay_ms, seed=plan.seed,
            change_ms=self.change_ms,
        )  # fmt: skip
        self.truth = fraud_probability(self.events, self.change_ms)
        self.event_records = list(self.events.records())
        self.order = np.argsort(self.outcomes.outcome_time_ms, kind="stable")  # label order
        self.outcome_records = list(self.outcomes.records())  # in event order
        self.outcome_times = self.outcomes.outcome_time_ms[self.order]
        self.label_sent = np.zeros(total, dtype=bool)
        self.sent_at = np.zeros(total, dtype=np.int64)  # wall ms each event was sent
        self.events_sent = 0
        self._due = 0  # labels (in label order) up to here are sent or were considered

    def send_until(self, producer: Any, events: str, outcomes: str, n: int) -> None:
        """Send events up to index ``n`` and every label due by the last one's time."""
        now = int(time.time() * 1000)
        for key, value in self.event_records[self.events_sent : n]:
            producer.send(events, key=key, value=value)
        self.sent_at[self.events_sent : n] = now
        self.events_sent = max(self.events_sent, n)
        clock = self.events.event_time_ms[self.events_sent - 1]
        due = int(np.searchsorted(self.outcome_times, clock, side="right"))
        self._send_labels(producer, outcomes, self.order[self._due : due])
        self._due = max(self._due, due)

    def send_labels_of_sent(self, producer: Any, outcomes: str) -> int:
        """Send the labels of every event sent so far, due or not (the warm-up's history
        is labelled before the first model trains); returns how many labels are sent."""
        self._send_labels(producer, outcomes, np.arange(self.events_sent))
        return int(self.label_sent.sum())

    def _send_labels(self, producer: Any, outcomes: str, indexes: np.ndarray) -> None:
        for i in indexes:
            if not self.label_sent[i]:
                key, value = self.outcome_records[i]
                producer.send(outcomes, key=key, value=value)
                self.label_sent[i] = True

    def ceiling(self, before: bool) -> float:
        """AUC of the true fraud probability on the labelled events of one side of the
        change: the best any model could reach there."""
        from sklearn.metrics import roc_auc_score

        side = ((self.events.event_time_ms < self.change_ms) == before) & self.label_sent
        return float(roc_auc_score(self.outcomes.label[side], self.truth[side]))

    def holdout_ceiling(self, metadata: dict[str, Any]) -> float | None:
        """AUC of the true probability on a model's holdout: the labelled events of its
        holdout's event-time range (after its training window, up to the newest row)."""
        from sklearn.metrics import roc_auc_score

        window = metadata.get("training_window", {})
        if "end" not in window or "holdout_end" not in window:
            return None
        import pandas as pd

        lo, hi = (pd.Timestamp(window[k]).value // 1_000_000 for k in ("end", "holdout_end"))
        t = self.events.event_time_ms
        rows = (t > lo) & (t <= hi) & self.label_sent
        labels = self.outcomes.label[rows]
        if len(np.unique(labels)) < 2:
            return None
        return float(roc_auc_score(labels, self.truth[rows]))


class Watcher:
    """What the story shows while it runs: the monitor's rows (topic ``monitoring``) and
    the model history."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from inference.model_events import ModelEvents

        self.settings = settings
        self.history = ModelEvents(settings.stores.models_dir)
        self.consumer = KafkaConsumer(**settings.kafka.python_args())
        tp = TopicPartition(settings.monitoring_topic, 0)
        self.consumer.assign([tp])
        self.consumer.seek_to_end(tp)
        self.latest: dict[tuple[str, str, str | None], float] = {}

    def poll(self) -> None:
        """Take the rows published since the last poll."""
        import json

        for records in self.consumer.poll(timeout_ms=0, max_records=50_000).values():
            for r in records:
                row = json.loads(r.value)
                value = row["value"]  # NaN travels as null in JSON
                key = (row["model_version"], row["metric"], row["feature"])
                self.latest[key] = float("nan") if value is None else float(value)

    def value(self, version: str | None, metric: str, feature: str | None = None) -> float:
        """The latest value of a row (NaN if none yet)."""
        return self.latest.get((version or "", metric, feature), float("nan"))

    def max_psi(self, version: str | None) -> tuple[str, float]:
        """The feature of ``version`` with the largest latest PSI."""
        found = [(v, f) for (ver, m, f), v in self.latest.items() if ver == version and m == "psi"]
        if not found:
            return "", float("nan")
        value, feature = max(found, key=lambda p: p[0])
        return feature or "", value

    def kinds(self) -> list[str]:
        """The decisions so far."""
        return [r["kind"] for r in self.history.rows()]

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()


class Asker:
    """Asks ``/predict`` about random users from a thread, as an online service would."""

    def __init__(self, port: int, users: int, every_s: float = 0.02) -> None:
        self.port, self.users, self.every_s = port, users, every_s
        self.latencies_ms: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="asker", daemon=True)

    def start(self) -> Asker:
        """Start asking."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop asking."""
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import httpx

        rng = np.random.default_rng(0)
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5.0) as http:
            while not self._stop.is_set():
                user = int(rng.integers(0, self.users))
                started = time.perf_counter()
                try:
                    ok = http.post("/predict", json={"user_ids": [user]}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    self.errors += 1
                self._stop.wait(self.every_s)


def run_demo(settings: Settings, plan: Plan = Plan(), *, timeout_s: float = 300.0) -> Path:
    """Tell the whole story; returns the report's path."""
    from featflow.processes import start_command, stop_process, wait_caught_up
    from infra.broker import embedded_broker
    from infra.process import free_port
    from infra.producer import make_producer
    from infra.topics import ensure_topics

    # A fresh data directory per run: the embedded broker starts empty, so checkpoints and
    # stores from an earlier run would not match its log.
    home = settings.home / "demo"
    report = settings.home / "reports" / "demo.html"
    shutil.rmtree(home, ignore_errors=True)
    (home / "logs").mkdir(parents=True)
    (home / "policy.yaml").write_text(POLICY)
    started = time.monotonic()
    with ExitStack() as stack:
        stack.enter_context(_stopped_by_signals())
        bootstrap = settings.kafka_bootstrap
        if "FEATFLOW_KAFKA_BOOTSTRAP" not in os.environ:
            broker = stack.enter_context(embedded_broker(log_path=home / "logs" / "broker.log"))
            bootstrap = f"127.0.0.1:{broker.port}"
            click.echo(f"broker: Tansu on {bootstrap}")
        settings = demo_settings(settings, home, bootstrap)
        ensure_topics(settings.kafka, settings.topics)
        port = free_port()
        # /predict does not publish here: its predictions carry the wall clock's time, while
        # this story's event time runs 500x faster; one watermark cannot hold both.
        procs = {
            name: start_command(settings, name, home / "logs" / f"{name}.log", args, bound=True)
            for name, args in (("worker", ()), ("monitor", ()), ("trainer", ()),
                               ("serve", ("--port", str(port), "--no-publish")))
        }  # fmt: skip
        for name in ("serve", "trainer", "monitor", "worker"):  # stopped in this order
            stack.callback(stop_process, procs[name])
        click.echo(f"services: worker, monitor, trainer, serve on http://127.0.0.1:{port} "
                   f"(logs in {home / 'logs'})")  # fmt: skip

        wall_start_ms = int(time.time() * 1000)
        stream = Stream(plan, wall_start_ms)
        producer = make_producer(settings.kafka)
        stack.callback(producer.close)
        topics = settings.topics

        # -- warm-up: 26 h of the old world, and the first model trained on it
        stream.send_until(producer, topics.events, topics.outcomes, plan.warmup)
        labelled = stream.send_labels_of_sent(producer, topics.outcomes)
        producer.flush()
        wait_caught_up(settings, [procs["worker"]], timeout_s)
        _wait_for_labels(settings, labelled, timeout_s)
        watcher = Watcher(settings)
        stack.callback(watcher.close)
        _request_first_model(settings, producer)
        _wait(lambda: "promoted" in watcher.kinds(), timeout_s, "the first model", procs)
        click.echo(f"warm-up: {plan.warmup:,} events and their labels; first champion "
                   f"trained ({time.monotonic() - started:.0f} s)")  # fmt: skip

        # -- live
        _wait_http(port, timeout_s, procs)
        asker = Asker(port, plan.users).start()
        stack.callback(asker.stop)
        live_started_ms = int(time.time() * 1000)
        change_sent_ms = _live(settings, plan, stream, producer, watcher, procs, timeout_s)
        producer.flush()
        wait_caught_up(settings, [procs["worker"]], timeout_s)
        time.sleep(2 * settings.monitor_interval_s + 1)  # a last snapshot of every label
        asker.stop()
        live_s = (int(time.time() * 1000) - live_started_ms) / 1000
        for name in ("serve", "trainer", "monitor", "worker"):
            stop_process(procs[name])

    return _finish(settings, plan, stream, watcher, asker, wall_start_ms, change_sent_ms,
                   live_s, report)  # fmt: skip


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the story as Ctrl-C does: the services and the broker are
    stopped on the way out (Python's default for SIGTERM would exit without it)."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise click.ClickException(f"stopped by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _request_first_model(settings: Settings, producer: Any) -> None:
    import msgspec

    request = {"request_id": f"initial-{uuid.uuid4().hex[:8]}", "time_ms": int(time.time() * 1000),
               "reason": "the first model, trained on the warm-up period"}  # fmt: skip
    producer.send(settings.retrain_topic, value=msgspec.json.encode(request))
    producer.flush()


def _live(
    settings: Settings,
    plan: Plan,
    stream: Stream,
    producer: Any,
    watcher: Watcher,
    procs: dict,
    timeout_s: float,
) -> int | None:
    """Stream the live events at ``plan.rate`` with progress; returns when the first
    changed event was sent (wall ms)."""
    from rich.live import Live
    from rich.table import Table

    topics = settings.topics
    first, last = plan.warmup, plan.warmup + plan.live
    change_index = plan.warmup + plan.change_after
    change_sent_ms = None
    promoted_at: int | None = None
    begun = time.monotonic()
    stop_at = last
    with Live(refresh_per_second=4, transient=False) as live:
        while stream.events_sent < stop_at:
            elapsed = time.monotonic() - begun
            target = min(stop_at, first + int(elapsed * plan.rate))
            if change_sent_ms is None and target > change_index:
                change_sent_ms = int(time.time() * 1000)
            stream.send_until(producer, topics.events, topics.outcomes, target)
            watcher.poll()
            kinds = watcher.kinds()
            if promoted_at is None and kinds.count("promoted") >= 2:
                promoted_at = stream.events_sent
                stop_at = min(last, promoted_at + plan.after_promotion)
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                raise click.ClickException(f"{dead[0]} exited; see its log")
            if elapsed > timeout_s:
                raise click.ClickException("the story did not finish in time")
            live.update(_progress(Table, plan, stream, watcher, elapsed, change_index, kinds))
            time.sleep(0.25)
    return change_sent_ms


def _progress(table_cls, plan, stream, watcher, elapsed, change_index, kinds):
    from inference.registry import ModelRegistry

    registry = ModelRegistry(watcher.settings.stores.models_dir)
    champion = registry.champion_version()
    shadow = registry.shadow_version()
    live_sent = stream.events_sent - plan.warmup
    if stream.events_sent <= change_index:
        phase = "stable world"
    elif kinds.count("promoted") >= 2:
        phase = "challenger promoted: recovering"
    elif "shadow_started" in kinds:
        phase = f"shadow trial of {shadow}"
    elif kinds.count("triggered") >= 2:
        phase = "retraining (waiting for the changed world's labels, then training)"
    else:
        phase = "the world changed: the monitor is watching"
    feature, psi = watcher.max_psi(champion)
    table = table_cls(title="featflow demo", show_header=False, min_width=72)
    table.add_row("phase", phase)
    table.add_row("events sent", f"{live_sent:,} live ({live_sent / max(elapsed, 1e-9):,.0f}/s)")
    table.add_row("worker lag", f"{watcher.value('*', 'worker_lag'):,.0f} events")
    table.add_row("champion", f"{champion}" + (f"   shadow: {shadow}" if shadow else ""))
    shadow_auc = f"   shadow {watcher.value(shadow, 'auc'):.3f}" if shadow else ""
    table.add_row("live AUC", f"{watcher.value(champion, 'auc'):.3f}{shadow_auc}")
    table.add_row("max PSI", f"{psi:.3f} ({feature})")
    table.add_row("decisions", ", ".join(kinds[-6:]))
    return table


def _finish(settings, plan, stream, watcher, asker, wall_start_ms, change_sent_ms, live_s,
            report):  # fmt: skip
    from featflow.report import Story, build_report

    frame = _predictions(settings)
    story = Story(wall_start_ms, change_sent_ms, {}, [])
    champion = frame[frame["role"] == "champion"]
    sent = stream.sent_at[plan.warmup : stream.events_sent]
    ids = np.array(stream.events.event_id[plan.warmup : stream.events_sent], dtype=object)
    sent_by_id = dict(zip(ids, sent, strict=True))
    scored = champion[champion["event_id"].isin(sent_by_id)]
    fresh = scored["prediction_ms"].to_numpy() - scored["event_id"].map(sent_by_id).to_numpy()
    story.ceiling = {"before": stream.ceiling(True), "after": stream.ceiling(False)}
    from inference.registry import ModelRegistry

    registry = ModelRegistry(settings.stores.models_dir)
    for version in registry.versions():
        ceiling = stream.holdout_ceiling(registry.get(version).metadata)
        if ceiling is not None:
            story.holdout_ceiling[version] = ceiling
    _series(story, sent, scored["prediction_ms"].to_numpy(), fresh, wall_start_ms)

    history = watcher.history.rows()
    promoted = [r for r in history if r["kind"] == "promoted"]
    rows = _auc_rows(settings)
    before = _last(rows, promoted[0]["model_version"], change_sent_ms)
    during = _min_between(rows, promoted[0]["model_version"], change_sent_ms,
                          promoted[1]["time_ms"] if len(promoted) > 1 else None)  # fmt: skip
    after = _last(rows, promoted[-1]["model_version"], None) if len(promoted) > 1 else None
    p99_predict = float(np.percentile(asker.latencies_ms, 99)) if asker.latencies_ms else None

    def f3(v: float | None) -> str:
        return "n/a" if v is None or v != v else f"{v:.3f}"

    story.summary = [
        ("events (warm-up + live)", f"{plan.warmup:,} + {stream.events_sent - plan.warmup:,}"),
        ("live events/s (sent and scored)", f"{(stream.events_sent - plan.warmup) / live_s:,.0f}"),
        ("freshness p99 (send to score)", f"{np.percentile(fresh, 99):,.0f} ms" if len(fresh)
         else "n/a"),
        ("/predict p99 (client side)", "n/a" if p99_predict is None else
         f"{p99_predict:.1f} ms over {len(asker.latencies_ms):,} requests, "
         f"{asker.errors} errors"),
        ("live AUC before the change", f"{f3(before)} (ceiling {f3(story.ceiling['before'])})"),
        ("live AUC after the change, worst", f"{f3(during)} (ceiling "
         f"{f3(story.ceiling['after'])})"),
        ("live AUC after the promotion", f"{f3(after)} (ceiling {f3(story.ceiling['after'])})"),
    ]  # fmt: skip
    for r in history:
        if r["kind"] in ("promoted", "rejected"):
            story.summary.append((f"{r['kind']} {r['model_version']}", r["reason"]))
    path = build_report(settings.stores, story, report)
    click.echo("")
    width = max(len(k) for k, _ in story.summary)
    for k, v in story.summary:
        click.echo(f"{k:<{width}}  {v}")
    click.echo(f"\nreport: {path}")
    return path


def _predictions(settings: Settings):
    import duckdb

    folder = settings.stores.predictions_dir
    query = f"""SELECT event_id, role, model_version,
                       epoch_ms(prediction_time) AS prediction_ms
                FROM read_parquet('{folder}/*.parquet') WHERE prediction_time IS NOT NULL"""
    with duckdb.connect() as con:
        return con.execute(query).df()


BIN_MS = 5000  # the report's time series: one point per 5 s of the wall clock


def _series(story, sent: np.ndarray, scored_ms: np.ndarray, fresh: np.ndarray, t0: int) -> None:
    """Throughput, lag and freshness per ``BIN_MS`` from what was sent and when it was
    scored (one point a second zigzags with the sender's quarter-second steps)."""
    from featflow.charts import Series

    if not len(sent) or not len(scored_ms):
        return
    end = max(int(sent.max()), int(scored_ms.max()))
    edges = np.arange(int(sent.min()), end + 1, BIN_MS)  # whole bins only
    xs = [(e - t0) / 1000 for e in edges[1:]]
    sent_n = np.searchsorted(np.sort(sent), edges[1:], side="right")
    order = np.argsort(scored_ms)
    scored_sorted = scored_ms[order]
    scored_n = np.searchsorted(scored_sorted, edges[1:], side="right")
    per_s = 1000 / BIN_MS
    story.throughput = [
        Series("sent", xs, (np.diff(np.r_[0, sent_n]) * per_s).tolist()),
        Series("scored", xs, (np.diff(np.r_[0, scored_n]) * per_s).tolist()),
    ]
    story.lag = [Series("sent - scored", xs, (sent_n - scored_n).clip(0).tolist())]
    bucket = np.searchsorted(edges, scored_sorted, side="right") - 1
    fresh_sorted = fresh[order]
    p50, p99 = [], []
    for k in range(len(edges) - 1):
        mine = fresh_sorted[bucket == k]
        p50.append(float(np.percentile(mine, 50)) if len(mine) else float("nan"))
        p99.append(float(np.percentile(mine, 99)) if len(mine) else float("nan"))
    story.freshness = [Series("p50", xs, p50), Series("p99", xs, p99)]


def _auc_rows(settings: Settings):
    import duckdb

    from featflow.report import MIN_SAMPLES

    query = f"""SELECT epoch_ms(time) AS t, model_version, value FROM
                read_parquet('{settings.stores.monitoring_dir}/*.parquet')
                WHERE metric = 'auc' AND samples >= {MIN_SAMPLES} ORDER BY t"""
    with duckdb.connect() as con:
        return con.execute(query).df()


def _last(rows, version: str, before_ms: int | None) -> float | None:
    mine = rows[rows["model_version"] == version]
    if before_ms is not None:
        mine = mine[mine["t"] < before_ms]
    return float(mine["value"].iloc[-1]) if len(mine) else None


def _min_between(rows, version: str, start_ms: int | None, end_ms: int | None) -> float | None:
    mine = rows[rows["model_version"] == version]
    if start_ms is not None:
        mine = mine[mine["t"] >= start_ms]
    if end_ms is not None:
        mine = mine[mine["t"] <= end_ms]
    return float(mine["value"].min()) if len(mine) else None


def _wait(check, timeout_s: float, what: str, procs: dict) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead:
            raise click.ClickException(f"{dead[0]} exited while waiting for {what}; see its log")
        if time.monotonic() > deadline:
            raise click.ClickException(f"{what} did not come within {timeout_s:g} s")
        time.sleep(0.2)


def _wait_http(port: int, timeout_s: float, procs: dict) -> None:
    import httpx

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    _wait(up, timeout_s, "the server", procs)


def _wait_for_labels(settings: Settings, expected: int, timeout_s: float) -> None:
    import pandas as pd

    deadline = time.monotonic() + timeout_s
    folder = settings.stores.outcomes_dir
    while time.monotonic() < deadline:
        if (
            any(folder.glob("*.parquet"))
            and len(pd.read_parquet(folder, columns=["event_id"])) >= expected
        ):
            return
        time.sleep(0.5)
    raise click.ClickException("labels were not all stored in time")
