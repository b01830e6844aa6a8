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

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def check_online_store(value: str) -> str:
    """``value`` if it names an online store featflow can use, else ``ValueError``.

    >>> check_online_store("sqlite")
    'sqlite'
    """
    if value != "sqlite" and not value.startswith(("redis://", "rediss://")):
        raise ValueError("online_store must be 'sqlite' or a redis:// URL")
    return value


# Bytes a consumer fetches per partition and request: a batch of ~600-byte records is a few
# thousand of them, so a reader that works in batches waits on fewer round trips.
PARTITION_FETCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Where the broker is and how long a new client waits for it to answer."""

    bootstrap: str = DEFAULT_BOOTSTRAP
    connect_timeout_s: float = 5.0


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
