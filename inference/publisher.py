"""Publishes predictions to Kafka off the request path.

Requests put records on a bounded queue and return; one thread drains it into
a kafka-python producer (which batches). When the queue is full the record is
dropped and counted, so a slow broker costs predictions on the topic, visibly,
never latency or errors on ``/predict``.
"""

from __future__ import annotations

import queue
import threading

from infra.config import KafkaConfig


class PredictionPublisher:
    """Sends prediction records to ``topic`` from a thread; never blocks the caller."""

    def __init__(self, kafka: KafkaConfig, topic: str, *, maxsize: int = 10_000):
        self.kafka = kafka
        self.topic = topic
        self._queue: queue.Queue[tuple[bytes, bytes] | None] = queue.Queue(maxsize)
        self.dropped = 0
        self.published = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._drain, name="predictions", daemon=True)

    def start(self) -> PredictionPublisher:
        """Start the sending thread (the producer connects on the first record)."""
        self._thread.start()
        return self

    def offer(self, key: bytes, value: bytes) -> bool:
        """Queue one record; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait((key, value))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, then stop the thread (waits at most ``timeout`` seconds)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _drain(self) -> None:
        from infra.producer import make_producer

        producer = None
        while True:
            item = self._queue.get()
            if item is None:
                break
            if producer is None:
                try:
                    producer = make_producer(self.kafka)
                except Exception:  # broker unreachable: count and keep serving
                    self.failed += 1
                    continue
            key, value = item
            producer.send(self.topic, key=key, value=value).add_callback(self._ok).add_errback(
                self._err
            )
        if producer is not None:
            producer.flush()
            producer.close()

    def _ok(self, _metadata: object) -> None:
        self.published += 1

    def _err(self, _exc: BaseException) -> None:
        self.failed += 1
