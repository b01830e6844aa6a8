"""Every metric the Grafana dashboard and the alert rules query is one the services export:
the worker, ``featflow serve`` and the monitor run as the deploy files run them (their
``/metrics`` and ``/health`` on ``FEATFLOW_METRICS_HOST``), on the real broker and Redis,
with a champion, events, predictions and labels flowing, and their ``/metrics`` are scraped
and compared by name (a histogram's ``_bucket``, ``_sum`` and ``_count``, a counter's
``_total``)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import numpy as np
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from featflow.processes import start_command, start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from features.scoring_row import SCORING_FEATURES
from inference.reference import histogram
from inference.registry import ModelRegistry
from infra.process import free_port
from infra.producer import publish
from infra.topics import ensure_topics
from tests.deploy import deploy_files as files
from tests.streams.pipeline_helpers import make_events

#: series Prometheus itself makes for every target (not featflow's to export)
PROMETHEUS_OWN = {"up"}


def _promote_model(settings: Settings) -> None:
    """A champion whose metadata has reference histograms, so the monitor measures drift."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(SCORING_FEATURES))).astype(np.float32)
    model = LogisticRegression().fit(x, (x[:, 11] > 0).astype(int))
    blob = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17).SerializeToString()
    references = {name: histogram(rng.lognormal(1, 1, 2000)) for name in SCORING_FEATURES}
    references["score"] = histogram(rng.random(2000), np.linspace(0, 1, 21))
    registry = ModelRegistry(settings.stores.models_dir)
    meta = {"feature_names": list(SCORING_FEATURES), "reference_histograms": references}
    registry.promote(registry.register(blob, meta).version)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_healthy(url: str, procs: list, logs: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            assert proc.poll() is None, "\n".join(p.read_text()[-3000:] for p in logs.glob("*"))
        try:
            if _get(url)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} not healthy in {timeout} s"
        time.sleep(0.3)


def _listens_on_every_interface(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port and not address.strip("0"):
                    return True
    return False


def test_dashboard_and_alerts_query_only_exported_metrics(
    settings: Settings, redis_url: str, tmp_path: Path
) -> None:
    ports = {"worker": free_port(), "monitor": free_port(), "serve": free_port()}
    settings = settings.model_copy(
        update={
            "online_store": redis_url,
            "worker_web_port": ports["worker"],
            "monitor_web_port": ports["monitor"],
            "monitor_interval_s": 1.0,
            "metrics_host": "0.0.0.0",  # as compose and the manifests set it
        }
    )
    ensure_topics(settings.kafka, settings.topics)
    _promote_model(settings)
    logs = tmp_path / "logs"
    logs.mkdir()
    serve_args = ["--host", "127.0.0.1", "--port", str(ports["serve"])]
    procs = [
        start_worker(settings, logs / "worker.log"),
        start_command(settings, "monitor", logs / "monitor.log"),
        start_command(settings, "serve", logs / "serve.log", serve_args),
    ]
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        for name in ports:
            _wait_healthy(f"{base[name]}/health", procs, logs)
        assert _listens_on_every_interface(ports["worker"])
        assert _listens_on_every_interface(ports["monitor"])

        events = make_events(400, users=40, seed=7, hours=2.0)
        publish(settings.kafka, settings.topics.events, events.records())
        wait_caught_up(settings, procs[:1], timeout=120)
        rng = np.random.default_rng(1)
        outcomes = []
        with httpx.Client(base_url=base["serve"], timeout=10) as client:
            for i in range(300):
                user, event = int(events.user_id[i]), events.event_id[i]
                response = client.post("/predict", json={"user_id": user, "event_id": event})
                assert response.status_code == 200, response.text
                label = int(rng.random() < response.json()["score"])
                outcome = {"event_id": event, "user_id": user, "label": label,
                           "outcome_time": int(events.event_time_ms[i]) + 1000}  # fmt: skip
                outcomes.append((str(user).encode(), json.dumps(outcome).encode()))
        publish(settings.kafka, settings.topics.outcomes, outcomes)

        wanted = ("featflow_monitor_auc{", "featflow_monitor_psi{", "featflow_monitor_freshness_s")
        deadline = time.monotonic() + 90
        while not all(w in (text := _get(f"{base['monitor']}/metrics")[1]) for w in wanted):
            assert time.monotonic() < deadline, text
            time.sleep(0.5)

        exported = set()
        for name in ports:
            status, text = _get(f"{base[name]}/metrics")
            assert status == 200, (name, text)
            exported |= files.exported_names(text)
    finally:
        for proc in procs:
            stop_process(proc)

    queries = {**files.dashboard_queries(), **files.alert_queries()}
    assert len(queries) > 20
    missing = {
        where: sorted(files.metric_names(expr) - exported - PROMETHEUS_OWN)
        for where, expr in queries.items()
        if files.metric_names(expr) - exported - PROMETHEUS_OWN
    }
    assert missing == {}, f"queried but not exported: {missing}"
    # the comparison has teeth: a name no service exports is caught
    assert files.metric_names("rate(featflow_events_acepted_total[1m])") - exported
