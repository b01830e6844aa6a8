"""The merchant worker: ``merchant_rows`` -> the merchant views, online and offline.

It owns merchant partitions in its own consumer group (``<group>-merchants``), with the
same ownership, checkpoints and at-least-once delivery as the feature worker
(``streams.partitioned``). Each fetch writes one part file per merchant view under
``$FEATFLOW_HOME/offline/<view>`` and upserts each touched merchant's newest row of each
view in the online store (Feast's layout: ``get_online_features`` reads them).
"""

from __future__ import annotations

import asyncio

import pyarrow as pa

from features.feast_repo import apply_repo, open_store
from features.merchant_state import MerchantState
from features.offline import OfflineWriter
from features.online import OnlineStore, open_online
from features.views import MERCHANT_VIEWS
from streams.checkpoint import Checkpoint
from streams.config import WorkerConfig
from streams.merchant_processor import MerchantCounts, MerchantEffects, MerchantProcessor, ViewRows
from streams.metrics import MerchantStats
from streams.partitioned import PartitionedWorker

#: A merchant worker takes its rows in batches at least this far apart (unless a fetch comes
#: back full): a merchant's aggregate over every user partition is not fresher for being
#: updated every 20 ms, and each update costs two part files and two online writes, CPU the
#: feature worker in the same process needs (benchmarks/stream_throughput.py).
PACE_S = 0.25


class MerchantWorker(PartitionedWorker[MerchantProcessor, MerchantEffects]):
    """Keeps the merchant views current from the rows the feature workers re-key."""

    process_in_thread = True  # the feature worker's freshness shares this event loop

    def __init__(self, config: WorkerConfig):
        topics = config.topics
        super().__init__(
            config,
            topic=topics.merchant_rows,
            dlq=topics.merchant_rows_dlq,
            group=config.merchant_group,
            pace_s=PACE_S,
        )
        stores = config.stores
        self.offline = {v.name: OfflineWriter(stores.view_dir(v.name)) for v in MERCHANT_VIEWS}
        self.online: dict[str, OnlineStore] = {}
        self.totals = MerchantCounts()

    def stats(self) -> MerchantStats:
        """The counters now, as plain data for ``/metrics``."""
        return MerchantStats(
            applied=dict(self.totals.applied),
            late=dict(self.totals.late),
            replays=self.totals.replays,
            partitions_owned=len(self.processors),
            dead_letters=dict(self.dead_letters),
            store_errors=dict(self.store_retry.errors),
            stores_up=self.store_retry.up(),
            **self.states_held(),
        )

    def new_processor(self, partition: int, checkpoint: Checkpoint | None) -> MerchantProcessor:
        """The partition's processor, its state restored from ``checkpoint`` if given (always
        whole: a merchant state is checkpointed whole)."""
        if checkpoint is None:
            return MerchantProcessor(topic=self.topic, partition=partition)
        if checkpoint.changes:
            raise ValueError(f"{self.topic}-{partition}: a merchant state has no changes to read")
        return MerchantProcessor(
            topic=self.topic,
            partition=partition,
            state=MerchantState.restore(checkpoint.state),
            offset=checkpoint.offset,
        )

    def merge(self, parts: list[MerchantEffects]) -> MerchantEffects:
        """One fetch's effects; counts them."""
        effects = MerchantEffects.merge(parts)
        self.totals.add(effects.counts)
        return effects

    async def prepare(self) -> None:
        """Open the merchant views' online stores (applying the Feast repo when no feature
        worker in this process did)."""
        stores = self.config.stores
        if self.config.role == "merchants":
            store = await asyncio.to_thread(apply_repo, stores)
        else:
            store = await asyncio.to_thread(open_store, stores)
        self.online = {v.name: open_online(store, v.specs, view=v) for v in MERCHANT_VIEWS}

    async def apply(self, effects: MerchantEffects) -> None:
        """Each view's rows to the stores, then the dead letters."""
        await asyncio.to_thread(self._store, effects.activity)
        await asyncio.to_thread(self._store, effects.outcomes)
        if effects.dead_letters:
            await self.send_dead_letters(self.dlq, effects.dead_letters)

    def _store(self, rows: ViewRows) -> None:
        if not rows.offline:
            return
        ids, times, features = rows.online()
        online = self.online[rows.view.name]
        write = lambda: online.write(entity_id=ids, event_time_ms=times, features=features)  # noqa: E731
        self.store_retry.call("online", write)
        table = pa.concat_tables(rows.offline)
        # named after the first row's source event (or label): readers drop second copies
        # by (kafka_partition, kafka_offset), the source coordinates every row keeps
        first = table.slice(0, 1).to_pylist()[0]
        tag = f"{first['kafka_partition']:04d}-{first['kafka_offset']:012d}"
        self.store_retry.call("offline", lambda: self.offline[rows.view.name].write(table, tag=tag))
