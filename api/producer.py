"""The API's Kafka producer for crm.touchpoints, created on first use so the app starts (and
reports itself degraded) while the broker is down."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError

from api.ingest import Record
from events.metadata import all_topics_metadata
from events.topics import TOUCHPOINTS

log = logging.getLogger(__name__)

BLOCK_MS = 2000
"""Longest wait to bootstrap, or for topic metadata before a send: fail fast, clients retry."""
ACK_TIMEOUT_MS = 10_000
"""Longest wait for the broker to acknowledge a request's records once they are queued."""


class BrokerUnavailable(Exception):
    """The broker could not be reached, or did not acknowledge in time."""


class LazyProducer:
    """A thread-safe, lazily created idempotent `KafkaProducer` (acks=all). Blocking: call it
    from a worker thread, never on the event loop."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def produce(self, records: Sequence[Record]) -> None:
        """Send every record to crm.touchpoints and wait until the broker acknowledged all.

        Raises BrokerUnavailable otherwise; some records may then have been written, which is
        harmless: the recorder deduplicates by event_id, so the client resends the same events.
        """
        try:
            producer = self._get()
            futures = [producer.send(TOUCHPOINTS, key=r.key, value=r.value) for r in records]
            deadline = time.monotonic() + ACK_TIMEOUT_MS / 1000
            for future in futures:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaError as error:
            raise BrokerUnavailable(str(error)) from error

    def check(self) -> None:
        """Raise BrokerUnavailable unless crm.touchpoints metadata is available (at most about
        2 * BLOCK_MS). Cheap when connected: the producer drops its metadata on disconnect."""
        try:
            self._get().partitions_for(TOUCHPOINTS)
        except KafkaError as error:
            raise BrokerUnavailable(str(error)) from error

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=timeout)

    def _get(self) -> KafkaProducer:
        if not self._lock.acquire(timeout=BLOCK_MS / 1000):
            raise BrokerUnavailable(f"still connecting to {self.bootstrap}")
        try:
            if self._producer is None:
                self._producer = self._create()
            return self._producer
        finally:
            self._lock.release()

    def _create(self) -> KafkaProducer:
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="crm-api",
            acks="all",
            enable_idempotence=True,
            retries=2**31 - 1,  # bounded by delivery_timeout_ms
            linger_ms=5,
            compression_type=None,
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=BLOCK_MS,
            max_block_ms=BLOCK_MS,
            request_timeout_ms=ACK_TIMEOUT_MS // 2,
            delivery_timeout_ms=ACK_TIMEOUT_MS,
        )
        log.info("producer connected bootstrap=%s", self.bootstrap)
        return all_topics_metadata(producer)
