"""Security settings reach every client, secrets stay out of logs and files, services listen
on loopback only, and nothing featflow reads back can run code (no pickle)."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from featflow.processes import start_command, start_worker, stop_process, wait_caught_up
from featflow.settings import Settings
from features.feast_repo import apply_repo, open_store
from features.online import OnlineUnavailable, open_online
from features.reader import read_online
from features.spec import DEFAULT_FEATURES
from infra.config import KafkaConfig, Stores
from infra.process import free_port
from infra.producer import publish
from infra.redis_server import embedded_redis
from infra.topics import ensure_topics
from testing.tls_front import TlsFront, make_certificates
from tests.streams.pipeline_helpers import make_events, oracle

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("featflow", "streams", "features", "inference", "infra", "monitoring")
KAFKA_CLIENTS = {
    "KafkaConsumer", "KafkaProducer", "KafkaAdminClient", "AIOKafkaConsumer", "AIOKafkaProducer",
}  # fmt: skip


def _sources() -> list[tuple[Path, ast.Module]]:
    return [
        (path, ast.parse(path.read_text(), str(path)))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    ]


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


# -- Kafka: one place builds every client's security settings ------------------------


def test_every_kafka_client_takes_the_security_settings() -> None:
    """Each Kafka client featflow constructs gets ``**<config>.python_args()`` or
    ``aio_args()`` (so SASL/SSL reach the worker, monitor, trainer, server and CLI), and
    the faust app its ``broker_credentials``; a client built any other way fails this."""
    seen, wrong = 0, []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _name(node.func)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name in KAFKA_CLIENTS:
                seen += 1
                spread = [k.value for k in node.keywords if k.arg is None]
                if not any(
                    isinstance(v, ast.Call) and _name(v.func) in ("python_args", "aio_args")
                    for v in spread
                ) or any(k.arg == "bootstrap_servers" for k in node.keywords):
                    wrong.append(where)
            elif name == "App" and any(k.arg == "broker" for k in node.keywords):
                seen += 1
                if not any(k.arg == "broker_credentials" for k in node.keywords):
                    wrong.append(where)
    assert seen >= 15, seen  # the scan finds the clients (it would pass vacuously otherwise)
    assert wrong == []


SASL = KafkaConfig(
    "broker:9093",
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="featflow",
    sasl_password="a-long-kafka-secret",
)


def test_kafka_security_arguments_are_ones_the_clients_take() -> None:
    args = SASL.python_args()
    for client in (KafkaConsumer, KafkaProducer, KafkaAdminClient):
        assert set(args) <= set(client.DEFAULT_CONFIG), client

    async def clients() -> list:  # aiokafka builds its clients on a running loop
        return [AIOKafkaConsumer(**SASL.aio_args())._client,
                AIOKafkaProducer(**SASL.aio_args()).client]  # fmt: skip

    for client in asyncio.run(clients()):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_password == "a-long-kafka-secret"
        assert client._ssl_context is not None
    credentials = SASL.faust_credentials()
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    with pytest.raises(ValueError, match="needs a SASL mechanism"):
        KafkaConfig(security_protocol="SASL_PLAINTEXT")


def test_settings_build_the_kafka_config_with_a_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "kafka.password"
    secret.write_text("a-long-kafka-secret\n")
    settings = Settings(
        home=tmp_path,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="featflow",
        kafka_sasl_password_file=secret,
    )
    kafka = settings.kafka
    assert kafka.python_args()["sasl_plain_password"] == "a-long-kafka-secret"
    assert "a-long-kafka-secret" not in repr(settings) + repr(kafka)


# -- Redis: AUTH from a file, never on disk or in a log --------------------------------


def test_online_url_with_a_password_is_refused() -> None:
    with pytest.raises(ValueError, match="FEATFLOW_REDIS_PASSWORD"):
        Settings(online_store="redis://:secret@127.0.0.1:6379")


def _worker_writes_feast_reads(settings: Settings, log: Path, seed: int) -> None:
    """Events through ``featflow worker`` into the configured Redis; each user's row read
    back by featflow and by Feast's own ``get_online_features`` equals the oracle's."""
    events = make_events(600, users=30, seed=seed)
    ensure_topics(settings.kafka, settings.topics)
    publish(settings.kafka, settings.topics.events, events.records())
    worker = start_worker(settings, log)
    try:
        wait_caught_up(settings, [worker], timeout=120)
    finally:
        stop_process(worker)
    latest = oracle(events).latest_per_user()
    got = read_online(settings.stores, latest.index.tolist()).set_index("user_id")
    np.testing.assert_allclose(
        got["amount_sum_24h"].to_numpy(float), latest["amount_sum_24h"], rtol=1e-9
    )
    feast = (
        open_store(settings.stores)
        .get_online_features(
            features=["user_txn_features:txn_count_1h"],
            entity_rows=[{"user_id": int(u)} for u in latest.index[:5]],
        )
        .to_dict()
    )
    assert feast["txn_count_1h"] == latest["txn_count_1h"].iloc[:5].tolist()


def test_redis_password_reaches_worker_and_feast_and_nowhere_else(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that requires AUTH: the worker writes with the password from a file, Feast's
    own ``get_online_features`` reads with it, a client without it is refused as
    unavailable; the password is in no log line and in no file featflow wrote."""
    password = "redis-secret-4f9c2a7e"
    secret = tmp_path / "redis.password"
    secret.write_text(password)
    redis = embedded_redis(log_path=tmp_path / "redis.log", password=password).start()
    monkeypatch.delenv("FEATFLOW_REDIS_PASSWORD", raising=False)
    try:
        settings = settings.model_copy(
            update={
                "online_store": f"redis://127.0.0.1:{redis.port}",
                "redis_password_file": secret,
            }
        )
        log = tmp_path / "worker.log"
        monkeypatch.setenv("FEATFLOW_LOGLEVEL", "info")  # more lines to leak into
        _worker_writes_feast_reads(settings, log, seed=5)
        without = Stores(settings.home, settings.online_store)
        os.environ.pop("FEATFLOW_REDIS_PASSWORD", None)
        reader = open_online(open_store(without), DEFAULT_FEATURES)
        assert "redis" in (reader.unavailable() or "")
        with pytest.raises(OnlineUnavailable):
            reader.read([1])
    finally:
        redis.stop()
    assert password not in log.read_text()
    for path in settings.home.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert password.encode() not in path.read_bytes(), path


def test_redis_over_tls_verifies_the_server_and_carries_the_features(
    settings: Settings, tmp_path: Path
) -> None:
    """``rediss://`` with ``FEATFLOW_REDIS_CA_FILE``: the worker writes and Feast's
    ``get_online_features`` reads through a TLS front to Redis (the port featflow is given
    speaks only TLS), and a client that trusts another CA is refused at the handshake."""
    certificates = make_certificates(tmp_path / "tls")
    redis = embedded_redis(log_path=tmp_path / "redis.log").start()
    try:
        with TlsFront(certificates, redis.port) as front:
            settings = settings.model_copy(
                update={
                    "online_store": f"rediss://127.0.0.1:{front.port}",
                    "redis_ca_file": certificates.ca,
                }
            )
            _worker_writes_feast_reads(settings, tmp_path / "worker.log", seed=6)
            assert front.handshakes > 0  # featflow's port speaks only TLS: it came this way
            stranger = make_certificates(tmp_path / "stranger")
            other = Stores(
                tmp_path / "stranger-home", settings.online_store, redis_ca_file=str(stranger.ca)
            )
            reader = open_online(apply_repo(other), DEFAULT_FEATURES)
            assert "certificate verify failed" in (reader.unavailable() or "").lower()
    finally:
        redis.stop()


# -- every listening service on loopback -------------------------------------------------


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc shows them) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1


def test_every_service_listens_on_loopback_only(settings: Settings, tmp_path: Path) -> None:
    """The worker's and the monitor's /metrics and ``featflow serve``, each started as a
    user starts it: every port they listen on is bound to 127.0.0.1 (the broker and Redis
    the tests start are checked the same way)."""
    ports = {"worker": free_port(), "monitor": free_port(), "serve": free_port()}
    settings = settings.model_copy(
        update={"worker_web_port": ports["worker"], "monitor_web_port": ports["monitor"]}
    )
    ensure_topics(settings.kafka, settings.topics)
    procs = [
        start_worker(settings, tmp_path / "worker.log"),
        start_command(settings, "monitor", tmp_path / "monitor.log"),
        start_command(
            settings,
            "serve",
            tmp_path / "serve.log",
            ["--no-publish", "--port", str(ports["serve"])],
        ),
    ]
    try:
        for name, port in ports.items():
            deadline = time.monotonic() + 90
            while not _listening(port):
                assert all(p.poll() is None for p in procs), (tmp_path / f"{name}.log").read_text()
                assert time.monotonic() < deadline, f"{name} never listened on {port}"
                time.sleep(0.2)
            assert _listening(port) <= LOOPBACK, (name, _listening(port))
        broker_port = int(settings.kafka_bootstrap.rsplit(":", 1)[1])
        assert _listening(broker_port) <= LOOPBACK
        urllib.request.urlopen(f"http://127.0.0.1:{ports['worker']}/metrics", timeout=10)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            stop_process(proc)


# -- nothing read back can run code ------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal",
                  "shelve"}  # fmt: skip


def test_no_code_executing_deserialization() -> None:
    """No module that can run code while decoding is imported; ``np.load`` always refuses
    pickles; no eval/exec; YAML only through ``safe_load``. The one file featflow executes
    is the Feast definitions module it has just written itself (``feast_repo.apply_repo``)."""
    found = []
    for path, tree in _sources():
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names]
                module = node.module if isinstance(node, ast.ImportFrom) else None
                for name in [module, *names]:
                    if name and name.split(".")[0] in UNSAFE_MODULES:
                        found.append(f"{where}:{node.lineno} imports {name}")
            if not isinstance(node, ast.Call):
                continue
            name = _name(node.func)
            if name in ("eval", "exec") and isinstance(node.func, ast.Name):
                found.append(f"{where}:{node.lineno} {name}()")
            if name == "load" and getattr(node.func, "value", None) is not None:
                owner = getattr(node.func.value, "id", "")
                if owner == "np" and not any(
                    k.arg == "allow_pickle" and getattr(k.value, "value", True) is False
                    for k in node.keywords
                ):
                    found.append(f"{where}:{node.lineno} np.load without allow_pickle=False")
                if owner == "yaml":
                    found.append(f"{where}:{node.lineno} yaml.load")
            if name == "run_path" and where != "features/feast_repo.py":
                found.append(f"{where}:{node.lineno} runpy.run_path")
    assert found == []
    assert np.load.__name__ == "load"  # the scan looks for the right name
