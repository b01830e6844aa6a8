"""The small configs that components below the CLI take instead of the whole ``Settings``.

``featflow.settings.Settings`` (the top layer) reads the environment and the YAML file and
composes these; a worker, a reader or a test builds only the parts it needs, as Quix
Streams composes its ``ApplicationConfig`` from smaller ones. Each fact that two processes
must agree on (a topic name, where a store lives) is defined here, once.

>>> Topics(events="clicks").dlq
'clicks.dlq'
>>> Stores(Path("/srv/ff"), "redis://127.0.0.1:6390").online_store_kind
'redis'
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def check_online_store(value: str) -> str:
    """``value`` if it names an online store featflow can use, else ``ValueError``; a URL
    must not carry a password (it would show wherever the URL does).

    >>> check_online_store("sqlite")
    'sqlite'
    """
    if value != "sqlite" and not value.startswith(("redis://", "rediss://")):
        raise ValueError("online_store must be 'sqlite' or a redis:// URL")
    if "@" in value:
        raise ValueError(
            "online_store must not carry credentials: set FEATFLOW_REDIS_PASSWORD or "
            "FEATFLOW_REDIS_PASSWORD_FILE instead"
        )
    return value


# Bytes a consumer fetches per partition and request: a batch of ~600-byte records is a few
# thousand of them, so a reader that works in batches waits on fewer round trips.
PARTITION_FETCH_BYTES = 4 * 1024 * 1024


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Where the broker is, how long a new client waits for it to answer, and how clients
    authenticate: every Kafka client featflow makes is built from :meth:`python_args`
    (kafka-python), :meth:`aio_args` (aiokafka) or :meth:`faust_credentials`, so a setting
    reaches all of them (worker, monitor, trainer, server, CLI).

    >>> KafkaConfig("b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
    ...             sasl_username="u", sasl_password="p").python_args()["sasl_mechanism"]
    'SCRAM-SHA-512'
    >>> "s3cr3t" in repr(KafkaConfig(sasl_password="s3cr3t"))
    False
    """

    bootstrap: str = DEFAULT_BOOTSTRAP
    connect_timeout_s: float = 5.0
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None  # CA bundle to verify the brokers (else the system's)
    ssl_certfile: str | None = None  # client certificate (mutual TLS)
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(f"{self.security_protocol} needs a SASL mechanism, user and password")

    @property
    def sasl(self) -> bool:
        """Whether clients authenticate with SASL."""
        return self.security_protocol.startswith("SASL")

    @property
    def tls(self) -> bool:
        """Whether clients speak TLS to the brokers."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    def _common_args(self) -> dict[str, object]:
        """What kafka-python and aiokafka take under the same names."""
        args: dict[str, object] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
        }
        if self.sasl:
            args |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        return args

    def python_args(self) -> dict[str, object]:
        """Keyword arguments for a kafka-python client."""
        args = self._common_args()
        if self.tls:
            args |= {
                "ssl_cafile": self.ssl_cafile,
                "ssl_certfile": self.ssl_certfile,
                "ssl_keyfile": self.ssl_keyfile,
            }
        return args

    def aio_args(self) -> dict[str, object]:
        """Keyword arguments for an aiokafka client."""
        args = self._common_args()
        if self.tls:
            args["ssl_context"] = self.ssl_context()
        return args

    def faust_credentials(self) -> object | None:
        """faust's ``broker_credentials`` (None for PLAINTEXT)."""
        import faust

        if self.sasl:
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context() if self.tls else None,
            )
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for the brokers: the CA bundle, and the client certificate."""
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names and the partition count of the keyed topics.

    Events, outcomes and predictions are keyed by user id and share one partition count,
    so a user's records of all three land on the same partition number; ``merchant_rows``
    has as many partitions, merchant ``m`` on partition ``m mod partitions``.
    """

    events: str = "events"
    outcomes: str = "outcomes"
    predictions: str = "predictions"
    partitions: int = 8
    monitoring: str = "monitoring"  # the monitor's snapshot rows (JSON, long form)
    retrain: str = "retrain"  # the monitor's retraining requests
    model_events: str = "model.events"  # the trainer's decisions (the model history)
    merchant_rows: str = "merchant_rows"  # events and labels re-keyed by merchant (internal)

    @property
    def dlq(self) -> str:
        """Dead letters of the events topic."""
        return f"{self.events}.dlq"

    @property
    def outcomes_dlq(self) -> str:
        """Dead letters of the outcomes topic."""
        return f"{self.outcomes}.dlq"

    @property
    def merchant_rows_dlq(self) -> str:
        """Records of ``merchant_rows`` the merchant worker could not read."""
        return f"{self.merchant_rows}.dlq"

    @property
    def predictions_dlq(self) -> str:
        """Dead letters of the predictions topic (the monitor refuses them there)."""
        return f"{self.predictions}.dlq"

    @property
    def retrain_dlq(self) -> str:
        """Dead letters of the retrain topic (the trainer refuses them there)."""
        return f"{self.retrain}.dlq"

    def catalogue(self) -> dict[str, int]:
        """Topic name -> partition count, every topic featflow reads or writes.

        >>> Topics(partitions=3).catalogue()["events.dlq"]
        1
        """
        return {
            self.events: self.partitions,
            self.dlq: 1,
            self.outcomes: self.partitions,
            self.outcomes_dlq: 1,
            self.predictions: self.partitions,
            self.predictions_dlq: 1,
            self.monitoring: 1,
            self.retrain: 1,
            self.retrain_dlq: 1,
            self.model_events: 1,
            self.merchant_rows: self.partitions,
            self.merchant_rows_dlq: 1,
        }


@dataclass(frozen=True, slots=True)
class Stores:
    """Where featflow keeps its data under one home directory, and which online store."""

    home: Path
    online_store: str = "sqlite"  # or a redis:// URL
    # how long a Redis command may take (connect included) before the store counts as
    # unavailable: /predict answers 503 then, a worker retries (never a hung request)
    redis_timeout_s: float = 1.0
    redis_password: str | None = field(default=None, repr=False)  # Redis AUTH
    redis_ca_file: str | None = None  # verifies a rediss:// server's certificate
    # where checkpoints go: files under home (workers sharing a disk) or Kafka topics
    # (``streams.checkpoint_topic``: a partition's state moves to any machine)
    checkpoints: Literal["files", "kafka"] = "files"

    def __post_init__(self) -> None:
        check_online_store(self.online_store)

    @property
    def online_store_kind(self) -> Literal["sqlite", "redis"]:
        """Which Feast online store type the repo declares."""
        return "sqlite" if self.online_store == "sqlite" else "redis"

    @property
    def feature_repo(self) -> Path:
        """The generated Feast repository (``feature_store.yaml``, definitions, registry)."""
        return self.home / "feature_repo"

    @property
    def offline_dir(self) -> Path:
        """Parquet part files of the users' feature rows (Feast's file offline store)."""
        return self.view_dir("user_txn_features")

    def view_dir(self, view: str) -> Path:
        """Parquet part files of the feature view named ``view``."""
        return self.home / "offline" / view

    @property
    def outcomes_dir(self) -> Path:
        """Parquet part files of the outcomes (labels)."""
        return self.home / "outcomes"

    @property
    def models_dir(self) -> Path:
        """The model registry."""
        return self.home / "models"

    @property
    def checkpoint_dir(self) -> Path:
        """Per-partition window state checkpoints."""
        return self.home / "checkpoints"

    @property
    def predictions_dir(self) -> Path:
        """The predictions the monitor read, as parquet part files (for analysts)."""
        return self.home / "predictions"

    @property
    def monitoring_dir(self) -> Path:
        """The monitor's snapshot rows, as parquet part files."""
        return self.home / "monitoring"

    @property
    def faust_dir(self) -> Path:
        """The faust app's own data directory."""
        return self.home / "faust"
