"""The topic catalogue and its creation on any Kafka-protocol broker."""

from __future__ import annotations

import contextlib
import socket
import time

from infra.config import KafkaConfig, Topics

# kafka-python (0.12 s to import) is imported where it is used: every CLI command loads this
# module for BrokerUnavailable, and most of them (backfill, serve, train) never talk to Kafka.


class BrokerUnavailable(ConnectionError):
    """No Kafka broker answered at the bootstrap servers in time."""

    def __init__(self, bootstrap: str, detail: str):
        super().__init__(f"no Kafka broker at {bootstrap}: {detail}")
        self.bootstrap = bootstrap


def check_broker(bootstrap: str, timeout_s: float) -> None:
    """Raise ``BrokerUnavailable`` unless a bootstrap server accepts TCP within ``timeout_s``.

    Seconds, not kafka-python's 30 s of bootstrap retries, to tell a user that
    nothing runs there.
    """
    from kafka.cluster import collect_hosts

    hosts = collect_hosts(bootstrap, randomize=False)
    deadline = time.monotonic() + timeout_s
    last = "no bootstrap servers given"
    for i, (host, port, _) in enumerate(hosts):
        share = max(deadline - time.monotonic(), 0.05) / (len(hosts) - i)
        try:
            with socket.create_connection((host, port), timeout=share):
                return
        except OSError as exc:
            last = f"{host}:{port}: {exc.strerror or exc}"
    raise BrokerUnavailable(bootstrap, last)


def client_timeouts(timeout_s: float) -> dict[str, int]:
    """kafka-python settings that bound a new client's bootstrap to ``timeout_s``."""
    from kafka import KafkaAdminClient

    # kafka-python 3 bootstraps in the constructor for up to bootstrap_timeout_ms (30 s);
    # 2.x probes the broker's version for api_version_auto_timeout_ms instead.
    key = (
        "bootstrap_timeout_ms"
        if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG
        else "api_version_auto_timeout_ms"
    )
    return {key: int(timeout_s * 1000)}


def ensure_topics(kafka: KafkaConfig, topics: Topics, timeout: float | None = None) -> None:
    """Create missing topics; existing ones are left as they are.

    Retries the connection for ``timeout`` seconds (default ``kafka.connect_timeout_s``:
    a broker that has just opened its port may not answer yet), then raises
    ``BrokerUnavailable``.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    timeout = kafka.connect_timeout_s if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        left = max(deadline - time.monotonic(), 0.1)
        try:
            admin = KafkaAdminClient(
                **kafka.python_args(),
                client_id="featflow-admin",
                **client_timeouts(left),
            )
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    kafka.bootstrap, f"{type(exc).__name__} after {timeout:g}s"
                ) from exc
            time.sleep(0.2)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, num_partitions=parts, replication_factor=1)
            for name, parts in topics.catalogue().items()
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics(wanted)
    finally:
        admin.close()
