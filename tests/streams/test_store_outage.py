"""Redis stops answering for 10 s while events flow (SIGSTOP: connections hang, the hardest
case for a client): the worker retries, shows the outage on ``/metrics``, loses nothing
and catches up; ``/predict`` answers 503 with ``Retry-After`` within the store's timeout
and ``/health`` says why, then both recover by themselves. Then the same for a home folder
that stops taking files (a full or read-only disk)."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

from fastapi.testclient import TestClient

from featflow.processes import start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from features.feast_repo import apply_repo
from features.online import open_online
from features.scoring_row import SCORING_FEATURES, MerchantReader
from features.spec import DEFAULT_FEATURES
from inference.predictor import Predictor
from inference.registry import ModelRegistry
from inference.service import create_app
from infra.process import free_port
from infra.producer import publish
from infra.redis_server import embedded_redis
from infra.topics import ensure_topics
from tests.streams.pipeline_helpers import check_stores, make_events, oracle


def _metric(port: int, name: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _text(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_redis_outage_mid_stream(settings: Settings, tmp_path: Path) -> None:
    redis = embedded_redis(log_path=tmp_path / "redis.log").start()
    web = free_port()
    settings = settings.model_copy(
        update={"online_store": f"redis://127.0.0.1:{redis.port}", "worker_web_port": web}
    )
    events = make_events(8_000, users=300, seed=21)
    expected = oracle(events)
    ensure_topics(settings.kafka, settings.topics)
    records = list(events.records())
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    producer = threading.Thread(
        target=publish,
        args=(settings.kafka, settings.topics.events, records[1000:]),
        kwargs={"rate": 350},  # 20 s of events: the outage falls in the middle
    )
    try:
        publish(settings.kafka, settings.topics.events, records[:1000])
        _until(lambda: any(settings.stores.offline_dir.glob("*.parquet")), 120, "no rows")
        store = apply_repo(settings.stores)
        reader = open_online(store, DEFAULT_FEATURES)
        predictor = Predictor(ModelRegistry(settings.stores.models_dir), SCORING_FEATURES)
        app = create_app(predictor, reader, MerchantReader(store), None)
        with TestClient(app) as client:
            producer.start()
            time.sleep(3.0)
            os.kill(redis.pid, signal.SIGSTOP)
            try:
                _until(lambda: _metric(web, 'featflow_store_up{store="online"}') == 0.0, 30,
                       "the outage did not show on /metrics: " + _text(web))  # fmt: skip
                started = time.monotonic()
                answer = client.post("/predict", json={"user_id": 1})
                took = time.monotonic() - started
                assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
                assert "redis" in answer.json()["detail"]
                assert took < settings.redis_timeout_s * 3, took  # never a hung request
                health = client.get("/health")
                assert health.status_code == 503
                assert health.json()["online_store"] == "unreachable"
                assert "redis" in health.json()["online_store_error"]
                time.sleep(10.0)
                assert worker.poll() is None, log.read_text()[-3000:]
            finally:
                os.kill(redis.pid, signal.SIGCONT)
            _until(lambda: client.get("/health").json()["online_store"] == "ok", 30, "health")
            # the store answers again: the request gets past it (to the missing model)
            after = client.post("/predict", json={"user_id": 1})
            assert after.status_code == 503 and after.json()["detail"] == "no model is loaded yet"
        producer.join()
        wait_caught_up(settings, [worker], timeout=180)
        assert _metric(web, 'featflow_store_up{store="online"}') == 1.0
        assert (_metric(web, 'featflow_store_errors_total{store="online"}') or 0) > 0
    finally:
        stop_process(worker)
    try:
        check_stores(settings, expected)  # none lost, none doubled
    finally:
        redis.stop()
    text = log.read_text()
    assert "online store unavailable, retrying" in text and "online store back after" in text


def test_unwritable_home_mid_stream(settings: Settings, tmp_path: Path) -> None:
    """The offline store's folder and the checkpoints' folder stop taking files for 6 s
    while events flow (each replaced by a plain file: every write fails with an OSError, as
    on a full or read-only disk, whatever the user): the worker retries, shows both on
    /metrics, keeps its last good checkpoint, and resumes with nothing lost or doubled."""
    web = free_port()
    settings = settings.model_copy(update={"worker_web_port": web})
    events = make_events(8_000, users=300, seed=22)
    expected = oracle(events)
    records = list(events.records())
    ensure_topics(settings.kafka, settings.topics)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    producer = threading.Thread(
        target=publish,
        args=(settings.kafka, settings.topics.events, records[1000:]),
        kwargs={"rate": 500},
    )
    folders = [settings.stores.offline_dir, settings.stores.checkpoint_dir]
    try:
        publish(settings.kafka, settings.topics.events, records[:1000])
        _until(lambda: any(settings.stores.offline_dir.glob("*.parquet")), 120, "no rows")
        producer.start()
        time.sleep(2.0)
        for folder in folders:
            folder.rename(folder.with_name(folder.name + ".away"))
            folder.write_bytes(b"")  # a file where the folder was
        try:
            for store in ("offline", "checkpoint"):
                _until(lambda s=store: _metric(web, f'featflow_store_up{{store="{s}"}}') == 0.0,
                       30, f"the {store} outage did not show: " + _text(web))  # fmt: skip
            time.sleep(6.0)
            assert worker.poll() is None, log.read_text()[-3000:]
        finally:
            for folder in folders:
                folder.unlink()
                folder.with_name(folder.name + ".away").rename(folder)
        producer.join()
        wait_caught_up(settings, [worker], timeout=180)
        for store in ("offline", "checkpoint"):
            assert _metric(web, f'featflow_store_up{{store="{store}"}}') == 1.0
    finally:
        stop_process(worker)
    assert "offline store unavailable, retrying" in log.read_text()
    check_stores(settings, expected)
