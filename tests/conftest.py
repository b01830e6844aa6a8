"""Real servers for the integration suites: a Tansu broker and a Redis server.

Both start once per session on free ports and are stopped at the end. A server
that cannot start fails the tests that need it; nothing is skipped silently.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from featflow.settings import Settings
from infra.broker import embedded_broker
from infra.redis_server import embedded_redis


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with embedded_broker(log_path=log) as broker:
        yield f"127.0.0.1:{broker.port}"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("redis") / "redis.log"
    with embedded_redis(log_path=log) as server:
        yield f"redis://127.0.0.1:{server.port}"


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    """Settings isolated per test: own home, topic and consumer group on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        home=tmp_path / "home",
        kafka_bootstrap=kafka_bootstrap,
        events_topic=f"events_{tag}",
        outcomes_topic=f"outcomes_{tag}",
        predictions_topic=f"predictions_{tag}",
        monitoring_topic=f"monitoring_{tag}",
        retrain_topic=f"retrain_{tag}",
        model_events_topic=f"model_events_{tag}",
        merchant_rows_topic=f"merchant_rows_{tag}",
        consumer_group=f"workers_{tag}",
        topic_partitions=4,
        checkpoint_interval_s=0.5,
    )


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One Spark session for the suite (``--engine spark``'s tests): ``local[2]``, as small
    as CI's 2 cores, few shuffle partitions. pyspark is imported only where it is used."""
    from features.spark_backfill import spark_session

    conf = {"spark.sql.shuffle.partitions": "3", "spark.driver.memory": "1g"}
    with spark_session("local[2]", conf) as session:
        yield session
