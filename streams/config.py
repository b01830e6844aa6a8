"""What a stream worker needs to run, as plain values (composed by ``Settings.worker``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from features.spec import DEFAULT_LATENESS_MS, NO_EXPIRY, Expiry
from inference.retraining import RetrainSettings
from infra.config import KafkaConfig, Stores, Topics
from infra.events import EventRules
from monitoring.policy import Policy


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """A stream worker's configuration.

    ``session_timeout_s`` also sets the heartbeat (a sixth of it) and the rebalance
    timeout (twice it): a SIGKILLed member must leave the group quickly.
    """

    kafka: KafkaConfig
    topics: Topics
    stores: Stores
    rules: EventRules = EventRules()
    lateness_ms: int = DEFAULT_LATENESS_MS
    expiry: Expiry = NO_EXPIRY
    group: str = "featflow-worker"
    session_timeout_s: float = 6.0
    batch_max_records: int = 10_000
    batch_max_wait_ms: int = 20
    checkpoint_interval_s: float = 5.0
    stream_scoring: bool = False
    web_port: int = 0  # faust web (/metrics, /health); 0 disables it
    web_host: str = "127.0.0.1"  # where it listens
    # which workers this process runs: the feature worker (events, outcomes), the merchant
    # worker (merchant_rows), or both
    role: Literal["all", "users", "merchants"] = "all"

    @property
    def merchant_group(self) -> str:
        """The merchant workers' consumer group (of ``merchant_rows``)."""
        return f"{self.group}-merchants"


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """The monitor's configuration (composed by ``Settings.monitor``).

    ``horizon_s`` of event time a prediction waits for its outcome; the windows hold the
    latest ``window_labels`` labelled predictions (quality) and ``window_events``
    predictions (drift) per model version; a snapshot and a checkpoint every
    ``interval_s``; ``/metrics`` on ``web_host:web_port`` (0: no web server).
    """

    kafka: KafkaConfig
    topics: Topics
    stores: Stores
    rules: EventRules = EventRules()
    policy: Policy = Policy()
    horizon_s: float = 86_400.0
    window_labels: int = 5000
    window_events: int = 5000
    interval_s: float = 5.0
    batch_max_records: int = 5000
    web_host: str = "127.0.0.1"
    web_port: int = 0
    worker_group: str | None = None  # whose lag on ``events`` each snapshot reports


@dataclass(frozen=True, slots=True)
class TrainerConfig:
    """The trainer's configuration (composed by ``Settings.trainer``)."""

    kafka: KafkaConfig
    topics: Topics
    stores: Stores
    rules: EventRules = EventRules()
    retrain: RetrainSettings = RetrainSettings()
