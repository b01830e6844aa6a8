"""One settings object for every part of featflow.

Values come from, in order of precedence: keyword arguments, ``FEATFLOW_*``
environment variables, an optional YAML file (``FEATFLOW_CONFIG`` or the CLI's
``--config``), and the defaults below. Everything that must agree between a
producer, a worker and a reader (topic names, store locations) lives here so
two processes started with the same environment see the same system.

This is the top layer's object: components take the small configs it composes
(``infra.config``, ``streams.config``), never ``Settings`` itself.

>>> Settings(online_store="redis://127.0.0.1:6390").stores.online_store_kind
'redis'
>>> Settings(events_topic="clicks").topics.dlq
'clicks.dlq'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from features.spec import DEFAULT_EXPIRY, DEFAULT_LATENESS_MS, Expiry
from inference.auth import Tokens
from inference.retraining import RetrainSettings
from infra.config import DEFAULT_BOOTSTRAP, KafkaConfig, Stores, Topics, check_online_store
from infra.events import AMOUNT_LIMIT, EventRules
from monitoring.policy import Policy
from streams.config import MonitorConfig, TrainerConfig, WorkerConfig


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the optional YAML file named by ``FEATFLOW_CONFIG``."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is overridden; pydantic never calls this

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("FEATFLOW_CONFIG")
        if not path:
            return {}
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of setting names to values")
        return data


class Settings(BaseSettings):
    """featflow configuration (env prefix ``FEATFLOW_``)."""

    model_config = SettingsConfigDict(env_prefix="FEATFLOW_", frozen=True, extra="forbid")

    home: Path = Field(Path(".featflow"), description="Data directory: stores, checkpoints.")
    kafka_bootstrap: str = Field(DEFAULT_BOOTSTRAP, description="Kafka bootstrap servers.")
    online_store: str = Field("sqlite", description="'sqlite' or a redis://host:port URL.")

    events_topic: str = "events"
    outcomes_topic: str = "outcomes"
    predictions_topic: str = "predictions"
    monitoring_topic: str = "monitoring"
    retrain_topic: str = "retrain"
    model_events_topic: str = "model.events"
    merchant_rows_topic: str = "merchant_rows"
    topic_partitions: int = Field(8, ge=1)
    consumer_group: str = "featflow-worker"

    allowed_lateness_s: float = Field(DEFAULT_LATENESS_MS / 1000, ge=0)
    idle_reset_s: float = Field(
        (DEFAULT_EXPIRY.idle_ms or 0) / 1000, ge=0,
        description="A user idle this long starts afresh (0: never); at least the longest "
        "window plus the lateness.",
    )  # fmt: skip
    max_delay_s: float = Field(
        (DEFAULT_EXPIRY.max_delay_ms or 0) / 1000, ge=0,
        description="Events this far behind the newest of their partition are late (0: no "
        "bound). With idle_reset_s, users idle for both are dropped from memory.",
    )  # fmt: skip
    max_future_skew_s: float = Field(86_400.0, ge=0)
    max_record_bytes: int = Field(65_536, ge=64)
    max_amount: float = Field(
        1e12, gt=0, le=AMOUNT_LIMIT, description="Larger amounts are refused (out_of_range)."
    )

    batch_max_records: int = Field(10_000, ge=1)
    batch_max_wait_ms: int = Field(20, ge=0)
    group_session_timeout_s: float = Field(6.0, gt=0, description="Consumer group liveness.")
    connect_timeout_s: float = Field(
        5.0, gt=0, description="How long a command waits for the broker or Redis to answer."
    )
    redis_timeout_s: float = Field(
        1.0, gt=0, description="How long a Redis command may take before the store is down."
    )
    checkpoint_interval_s: float = Field(5.0, ge=0)
    checkpoint_store: Literal["files", "kafka"] = Field(
        "files",
        description="Where partition state is checkpointed: 'files' under home (workers "
        "sharing a disk) or 'kafka' (topics <topic>.checkpoints: a partition's state moves "
        "to a worker on any machine).",
    )
    stream_scoring: bool = Field(False, description="Worker scores each accepted event.")
    promotion_min_auc_gain: float = Field(
        0.0, description="A new model must beat the champion's holdout AUC by this much."
    )
    worker_web_port: int = Field(0, ge=0, description="faust web (/metrics); 0 disables it.")
    metrics_host: str = Field(
        "127.0.0.1",
        description="Where the worker's and the monitor's /metrics and /health listen: "
        "loopback by default; 0.0.0.0 in a container, for Prometheus and probes.",
    )
    worker_role: Literal["all", "users", "merchants"] = Field(
        "all", description="Which stream workers a worker process runs."
    )

    serve_max_inflight: int = Field(
        64, ge=1, description="/predict requests in flight before the next is shed (503)."
    )

    # How every Kafka client authenticates (infra.config.KafkaConfig). The password, like
    # every secret here, comes from the environment or a file and never shows in a repr
    # or a log line.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for the brokers' TLS.")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (mTLS).")
    kafka_ssl_keyfile: Path | None = None
    # Redis AUTH password (Feast's repo reads it from $FEATFLOW_REDIS_PASSWORD, never from
    # a file on disk) and, for a rediss:// URL, the CA bundle that verifies the server.
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None
    redis_ca_file: Path | None = None

    # Bearer tokens of featflow serve's scopes (inference/auth.py), from the environment or a
    # file each; a scope without one is open. Secret: never in a repr or a log line.
    predict_token: SecretStr | None = None
    predict_token_file: Path | None = None
    metrics_token: SecretStr | None = None
    metrics_token_file: Path | None = None
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None

    monitor_window_labels: int = Field(5000, ge=1, description="Labelled predictions (quality).")
    monitor_window_events: int = Field(5000, ge=1, description="Predictions (drift).")
    monitor_interval_s: float = Field(5.0, gt=0, description="Snapshot and checkpoint period.")
    monitor_horizon_s: float = Field(86_400.0, gt=0, description="How long a prediction waits.")
    monitor_policy: Path | None = Field(None, description="Retraining policy YAML file.")
    monitor_web_port: int = Field(0, ge=0, description="Monitor /metrics; 0 disables it.")

    trainer_history_s: float = Field(
        7 * 86_400.0, gt=0, description="Event time of training data before the newest label."
    )
    trainer_alpha: float = Field(
        0.05, gt=0, lt=1, description="A challenger must win with confidence 1 - alpha."
    )
    trainer_shadow: bool = Field(False, description="Trial a winning challenger in shadow.")
    trainer_shadow_min_labels: int = Field(
        1000, ge=10, description="Paired labelled events the shadow verdict needs."
    )
    trainer_shadow_timeout_s: float = Field(
        900.0, gt=0, description="How long a shadow trial waits for its verdict."
    )
    trainer_min_new_labels: int = Field(
        0, ge=0, description="Labelled events after a firing to wait for before training."
    )
    trainer_label_wait_s: float = Field(
        900.0, gt=0, description="How long training waits for those labels at most."
    )

    @field_validator("online_store")
    @classmethod
    def _check_online_store(cls, value: str) -> str:
        return check_online_store(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: keyword arguments, then ``FEATFLOW_*`` variables, then the YAML file."""
        return init_settings, env_settings, _YamlSource(settings_cls)

    def secret(self, name: str) -> str | None:
        """The secret setting ``name``: its variable's value, or the first line of the file
        ``<name>_file`` names; None if neither is set."""
        value: SecretStr | None = getattr(self, name)
        path: Path | None = getattr(self, f"{name}_file")
        if path is None:
            return None if value is None else value.get_secret_value()
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"{name}_file {path}: {exc.strerror}") from None
        secret = lines[0].strip() if lines else ""
        # both set is a mistake, unless the variable is the file's (Feast's repo reads
        # the Redis password from its variable, so featflow exports it)
        if value is not None and value.get_secret_value() != secret:
            raise ValueError(f"set {name} or {name}_file, not both")
        return secret

    @property
    def tokens(self) -> Tokens:
        """Each scope's token: the variable's, or the first line of its file."""
        return Tokens(**{s: self.secret(f"{s}_token") for s in ("predict", "metrics", "admin")})

    @property
    def kafka(self) -> KafkaConfig:
        """Where the broker is and how to authenticate, for every Kafka client."""

        def path(value: Path | None) -> str | None:
            return None if value is None else str(value)

        return KafkaConfig(
            self.kafka_bootstrap,
            self.connect_timeout_s,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.secret("kafka_sasl_password"),
            ssl_cafile=path(self.kafka_ssl_cafile),
            ssl_certfile=path(self.kafka_ssl_certfile),
            ssl_keyfile=path(self.kafka_ssl_keyfile),
        )

    @property
    def topics(self) -> Topics:
        """Topic names and partitions."""
        return Topics(
            self.events_topic,
            self.outcomes_topic,
            self.predictions_topic,
            self.topic_partitions,
            self.monitoring_topic,
            self.retrain_topic,
            self.model_events_topic,
            self.merchant_rows_topic,
        )

    @property
    def stores(self) -> Stores:
        """Where the stores, checkpoints and models live."""
        return Stores(
            self.home,
            self.online_store,
            self.redis_timeout_s,
            redis_password=self.secret("redis_password"),
            redis_ca_file=None if self.redis_ca_file is None else str(self.redis_ca_file),
            checkpoints=self.checkpoint_store,
        )

    @property
    def lateness_ms(self) -> int:
        """Allowed lateness per entity, in the kernels' unit."""
        return int(self.allowed_lateness_s * 1000)

    @property
    def expiry(self) -> Expiry:
        """When idle users start afresh and are dropped (``features.spec.Expiry``)."""
        return Expiry(int(self.idle_reset_s * 1000) or None, int(self.max_delay_s * 1000) or None)

    @property
    def event_rules(self) -> EventRules:
        """The limits every decoder of events and outcomes applies."""
        return EventRules(
            max_future_skew_ms=int(self.max_future_skew_s * 1000),
            max_record_bytes=self.max_record_bytes,
            max_amount=self.max_amount,
        )

    @property
    def policy(self) -> Policy:
        """The retraining policy: ``monitor_policy``'s YAML, else the defaults."""
        if self.monitor_policy is None:
            return Policy()
        raw = yaml.safe_load(Path(self.monitor_policy).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{self.monitor_policy}: a policy is a mapping of keys")
        return Policy.from_mapping(raw)

    @property
    def monitor(self) -> MonitorConfig:
        """What the monitor needs."""
        return MonitorConfig(
            kafka=self.kafka,
            topics=self.topics,
            stores=self.stores,
            rules=self.event_rules,
            policy=self.policy,
            horizon_s=self.monitor_horizon_s,
            window_labels=self.monitor_window_labels,
            window_events=self.monitor_window_events,
            interval_s=self.monitor_interval_s,
            batch_max_records=self.batch_max_records,
            web_host=self.metrics_host,
            web_port=self.monitor_web_port,
            worker_group=self.consumer_group,
        )

    @property
    def trainer(self) -> TrainerConfig:
        """What the trainer needs."""
        return TrainerConfig(
            kafka=self.kafka,
            topics=self.topics,
            stores=self.stores,
            rules=self.event_rules,
            retrain=RetrainSettings(
                history_s=self.trainer_history_s,
                margin=self.promotion_min_auc_gain,
                alpha=self.trainer_alpha,
                shadow=self.trainer_shadow,
                shadow_min_labels=self.trainer_shadow_min_labels,
                shadow_timeout_s=self.trainer_shadow_timeout_s,
                min_new_labels=self.trainer_min_new_labels,
                label_wait_s=self.trainer_label_wait_s,
            ),
        )

    @property
    def worker(self) -> WorkerConfig:
        """What a stream worker needs."""
        return WorkerConfig(
            kafka=self.kafka,
            topics=self.topics,
            stores=self.stores,
            rules=self.event_rules,
            lateness_ms=self.lateness_ms,
            expiry=self.expiry,
            group=self.consumer_group,
            session_timeout_s=self.group_session_timeout_s,
            batch_max_records=self.batch_max_records,
            batch_max_wait_ms=self.batch_max_wait_ms,
            checkpoint_interval_s=self.checkpoint_interval_s,
            stream_scoring=self.stream_scoring,
            web_host=self.metrics_host,
            web_port=self.worker_web_port,
            role=self.worker_role,
        )
