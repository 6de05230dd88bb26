"""Recorder: reads crm.touchpoints, dead-letters what breaks the wire contract, and appends the
rest, deduplicated by event id, to the customers' streams in the event store.

Exactly-once effect: the Kafka intake position of every batch is tracked in the same PostgreSQL
transaction as its events, per incarnation of the topic (its topic id), and the recorder seeks to
it when it gets a partition. Kafka's committed offsets are only a hint; duplicates that slip
through (a producer's resend, a broker restarted empty) are dropped by event id.

Run it with `python -m services.recorder` (the `crm up` supervisor does).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from events import topics
from events.codec import decode
from events.envelope import Envelope
from events.errors import InvalidEvent
from events.metadata import all_topics_metadata, exact
from infra.eventstore import EventStore, IntakePosition
from infra.logs import configure_logging
from infra.settings import Settings

log = logging.getLogger("crm.recorder")

_RETRY_SECONDS = 1.0
_DEADLETTER_ACK_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Rejection:
    record: ConsumerRecord
    error: InvalidEvent


def triage(
    records: Iterable[ConsumerRecord], max_event_bytes: int
) -> tuple[list[Envelope], list[Rejection]]:
    """Split consumed records into valid envelopes (in order) and rejections with reasons."""
    accepted: list[Envelope] = []
    rejected: list[Rejection] = []
    for record in records:
        try:
            accepted.append(decode(record.value or b"", max_bytes=max_event_bytes))
        except InvalidEvent as error:
            rejected.append(Rejection(record, error))
    return accepted, rejected


def deadletter_headers(rejection: Rejection) -> list[tuple[str, bytes]]:
    record, error = rejection.record, rejection.error
    reason = f"{error.field}: {error.message}" if error.field else error.message
    return [
        *(record.headers or []),
        ("crm.error.code", error.code.encode()),
        ("crm.error.message", reason.encode()),
        ("crm.source.topic", record.topic.encode()),
        ("crm.source.partition", str(record.partition).encode()),
        ("crm.source.offset", str(record.offset).encode()),
    ]


class Recorder(ConsumerRebalanceListener):
    """The consume → validate → record loop. Dependencies are passed in (see `main`)."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        store: EventStore,
        *,
        max_event_bytes: int,
        batch_size: int,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.store = store
        self.max_event_bytes = max_event_bytes
        self.batch_size = batch_size
        # Next offset to read per partition, with the topic id it belongs to.
        self._next: dict[TopicPartition, tuple[str | None, int]] = {}
        self._assigned: set[TopicPartition] = set()
        self._lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe(pattern=exact(topics.TOUCHPOINTS), listener=self)
        log.info("event=started topic=%s", topics.TOUCHPOINTS)
        while not stop.is_set():
            polled = self.consumer.poll(timeout_ms=200, max_records=self.batch_size)
            self._resume(polled)
            records = [r for batch in polled.values() for r in batch]
            if records:
                self.process(records)
                self.consumer.commit_async()
        log.info("event=stopped")

    def process(self, records: Sequence[ConsumerRecord]) -> None:
        """Dead-letter the invalid records, then record the valid ones and the positions."""
        accepted, rejected = triage(records, self.max_event_bytes)
        if rejected:
            self._deadletter(rejected)
        positions = self._positions(records)
        outcome = self.store.record(accepted, positions)
        for position in positions:
            tp = TopicPartition(position.topic, position.partition)
            self._next[tp] = (position.topic_id, position.next_offset)
        log.info(
            "event=batch_recorded records=%d recorded=%d duplicates=%d deadlettered=%d",
            len(records),
            outcome.recorded,
            outcome.duplicates,
            len(rejected),
        )

    # ConsumerRebalanceListener: called on kafka-python's IO thread, which must not block, so
    # the seeks to the tracked positions happen on the next turn of the loop (`_resume`).
    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        for tp in revoked:
            self._next.pop(tp, None)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        with self._lock:
            self._assigned.update(assigned)

    def _resume(self, polled: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Seek newly assigned partitions to their tracked intake position; drop what the poll
        returned for them (it is read again from the right place)."""
        with self._lock:
            assigned, self._assigned = self._assigned, set()
        if not assigned:
            return
        for tp in assigned:
            topic_id = self._topic_id(tp.topic)
            tracked = None if topic_id is None else self.store.intake_offset(*_key(tp, topic_id))
            # Not compared with the end offset: the embedded broker under-reports it. A tracked
            # offset past the real end (an emptied topic that kept its id) is out of range, and
            # the consumer starts from the earliest; what it re-reads is dropped by event id.
            dropped = polled.pop(tp, [])
            if tracked is not None:
                self.consumer.seek(tp, tracked)
            elif dropped:
                self.consumer.seek(tp, dropped[0].offset)
            self._next[tp] = (topic_id, tracked or 0)
            log.info(
                "event=partition_assigned partition=%d topic_id=%s resume_at=%s",
                tp.partition,
                topic_id,
                tracked if tracked is not None else "committed-or-earliest",
            )

    def _positions(self, records: Sequence[ConsumerRecord]) -> list[IntakePosition]:
        last: dict[TopicPartition, int] = {}
        for record in records:
            last[TopicPartition(record.topic, record.partition)] = record.offset
        positions = []
        for tp, offset in last.items():
            topic_id, tracked = self._next.get(tp, (None, 0))
            # Track only forward moves of a known incarnation; re-read records (after a lost
            # commit or a broker restart) are deduplicated by event id alone.
            if topic_id is not None and offset + 1 > tracked:
                positions.append(IntakePosition(tp.topic, topic_id, tp.partition, offset + 1))
        return positions

    def _topic_id(self, topic: str) -> str | None:
        # kafka-python keeps the topic ids of its metadata on the client's cluster object.
        topic_id = self.consumer._client.cluster.topic_id(topic)
        return None if topic_id is None else str(topic_id)

    def _deadletter(self, rejected: Sequence[Rejection]) -> None:
        """Produce every rejection and wait for the broker's acks before going on."""
        while True:
            try:
                futures = [
                    self.producer.send(
                        topics.DEADLETTER,
                        key=r.record.key,
                        value=r.record.value,
                        headers=deadletter_headers(r),
                    )
                    for r in rejected
                ]
                for future in futures:
                    future.get(timeout=_DEADLETTER_ACK_TIMEOUT)
            except KafkaError as error:
                log.warning("event=deadletter_retry error=%r", error)
                threading.Event().wait(_RETRY_SECONDS)
                continue
            for r in rejected:
                log.info(
                    "event=deadlettered code=%s partition=%d offset=%d",
                    r.error.code,
                    r.record.partition,
                    r.record.offset,
                )
            return


def _key(tp: TopicPartition, topic_id: str) -> tuple[str, str, int]:
    return tp.topic, topic_id, tp.partition


def main() -> None:
    """Composition root: wire settings, Kafka and PostgreSQL into a Recorder and run it."""
    settings = Settings()
    configure_logging("recorder")
    store = EventStore(settings.dsn)
    store.create_tables()
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=settings.recorder_group,
        client_id="crm-recorder",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_records=settings.recorder_batch_size,
        fetch_max_wait_ms=50,  # the embedded broker does not answer a waiting fetch early
        allow_auto_create_topics=False,
    )
    producer = all_topics_metadata(
        KafkaProducer(
            bootstrap_servers=settings.bootstrap,
            client_id="crm-recorder-deadletter",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            allow_auto_create_topics=False,
        )
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    recorder = Recorder(
        consumer,
        producer,
        store,
        max_event_bytes=settings.max_event_bytes,
        batch_size=settings.recorder_batch_size,
    )
    try:
        recorder.run(stop)
    finally:
        consumer.close(autocommit=False)
        producer.close()
        store.close()


if __name__ == "__main__":
    main()
