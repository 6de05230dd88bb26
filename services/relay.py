"""Relay: publishes the outboxes of PostgreSQL to Kafka, each in its own order.

- The event store → crm.events: every recorded envelope plus its global `position` and customer
  `version`, keyed by customer id, in position order.
- The alert log (crm_alerts, written by the projector) → crm.alerts: every alert document, keyed
  by customer id, in the order it was logged.
- The intake outbox (crm_intake_outbox: touchpoints the platform emits itself, such as follow-ups
  scheduled after a purchase) → crm.touchpoints, where the recorder records them.

At least once: the last published position of each outbox is tracked in PostgreSQL only after the
broker acknowledged it, per incarnation of the topic (its topic id), so after a crash the relay
resumes where it was, and when the topic is recreated (the embedded broker restarted empty) it
publishes everything again. Consumers skip what they already have (customer version, alert_id).

New rows are noticed through PostgreSQL LISTEN/NOTIFY, not by slow polling. Each outbox runs in its
own thread with its own producer.

Run it with `python -m services.relay` (the `crm up` supervisor does).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol

import orjson
import psycopg
from eventsourcing.persistence import Notification
from kafka import KafkaProducer
from kafka.errors import KafkaError

from events import topics
from events.metadata import all_topics_metadata
from infra.eventstore import SCHEMA_LOCK, EventStore, notifications, relay_tracking_name
from infra.logs import configure_logging
from infra.settings import Settings
from projections.alerts import ALERTS_CHANNEL, CREATE_ALERTS_SQL, SELECT_ALERTS_AFTER_SQL
from services.intake_outbox import CREATE_OUTBOX_SQL, OUTBOX_CHANNEL, SELECT_AFTER_SQL

log = logging.getLogger("crm.relay")

BATCH = 2000
_IDLE_WAIT_S = 1.0
_ACK_TIMEOUT_S = 30.0

Waiter = Callable[[float], None]
"""Waits up to the given seconds for the outbox to get new rows."""


class OutboxMessage(NamedTuple):
    position: int
    key: bytes
    value: bytes


class Outbox(Protocol):
    """Rows to publish to `topic`, in the order of a position that only grows."""

    topic: str

    def read(self, after: int, limit: int) -> Sequence[OutboxMessage]: ...

    def new_rows(self) -> AbstractContextManager[Waiter]: ...


def relay_message(notification: Notification) -> tuple[bytes, bytes]:
    """(key, value) on crm.events for one stored event."""
    data = orjson.loads(notification.state)
    data["position"] = notification.id
    data["version"] = notification.originator_version
    return str(notification.originator_id).encode(), orjson.dumps(data)


class EventOutbox:
    """The event store's notification log, published to crm.events."""

    topic = topics.EVENTS

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def read(self, after: int, limit: int) -> list[OutboxMessage]:
        return [
            OutboxMessage(notification.id, *relay_message(notification))
            for notification in self.store.read(after, limit)
        ]

    def new_rows(self) -> AbstractContextManager[Waiter]:
        return self.store.new_events()


class TableOutbox:
    """A PostgreSQL table with a growing `seq`, published to `topic`: `select_sql` reads
    (seq, key, value) rows after a seq, `to_value` turns a value into the message bytes."""

    def __init__(
        self,
        dsn: str,
        topic: str,
        *,
        create_sql: str,
        select_sql: str,
        channel: str,
        to_value: Callable[[Any], bytes],
    ) -> None:
        self.dsn = dsn
        self.topic = topic
        self.select_sql = select_sql
        self.channel = channel
        self.to_value = to_value
        with psycopg.connect(dsn) as conn:  # one transaction, under the schema lock
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute(create_sql)

    def read(self, after: int, limit: int) -> list[OutboxMessage]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(self.select_sql, (after, limit)).fetchall()
        return [OutboxMessage(seq, key.encode(), self.to_value(v)) for seq, key, v in rows]

    def new_rows(self) -> AbstractContextManager[Waiter]:
        return notifications(self.dsn, self.channel)


def alert_outbox(dsn: str) -> TableOutbox:
    """The alert log (crm_alerts, written by the detectors), published to crm.alerts."""
    return TableOutbox(
        dsn,
        topics.ALERTS,
        create_sql=CREATE_ALERTS_SQL,
        select_sql=SELECT_ALERTS_AFTER_SQL,
        channel=ALERTS_CHANNEL,
        to_value=orjson.dumps,
    )


def intake_outbox(dsn: str) -> TableOutbox:
    """Touchpoints the platform emits (services/intake_outbox.py), published to crm.touchpoints."""
    return TableOutbox(
        dsn,
        topics.TOUCHPOINTS,
        create_sql=CREATE_OUTBOX_SQL,
        select_sql=SELECT_AFTER_SQL,
        channel=OUTBOX_CHANNEL,
        to_value=bytes,
    )


class Relay:
    """The read → publish → track loop of one outbox. Dependencies are passed in (see `main`)."""

    def __init__(
        self, outbox: Outbox, store: EventStore, new_producer: Callable[[], KafkaProducer]
    ) -> None:
        self.outbox = outbox
        self.store = store
        self.new_producer = new_producer
        self.producer = new_producer()

    def close(self) -> None:
        self.producer.close(timeout=5)

    def run(self, stop: threading.Event) -> None:
        topic_id, position = self._resume_point()
        with self.outbox.new_rows() as wait_for_new:
            while not stop.is_set():
                if self._topic_id() != topic_id:  # recreated topic: publish everything again
                    topic_id, position = self._resume_point()
                batch = self.outbox.read(position, BATCH)
                if not batch:
                    wait_for_new(_IDLE_WAIT_S)
                    continue
                try:
                    self.publish(batch)
                except KafkaError as error:
                    # A restarted broker forgets idempotent producers: start afresh and resume
                    # from the last acknowledged position.
                    log.warning("event=publish_failed topic=%s error=%r action=reconnect",
                                self.outbox.topic, error)  # fmt: skip
                    self.producer.close(timeout=0)
                    self.producer = self.new_producer()
                    stop.wait(_IDLE_WAIT_S)
                    topic_id, position = self._resume_point()
                    continue
                position = batch[-1].position
                self.store.track(relay_tracking_name(topic_id, self.outbox.topic), position)
        log.info("event=stopped topic=%s position=%d", self.outbox.topic, position)

    def _resume_point(self) -> tuple[str | None, int]:
        topic_id = self._topic_id()
        position = self.store.tracked(relay_tracking_name(topic_id, self.outbox.topic)) or 0
        log.info("event=resume topic=%s topic_id=%s after_position=%d",
                 self.outbox.topic, topic_id, position)  # fmt: skip
        return topic_id, position

    def publish(self, batch: Sequence[OutboxMessage]) -> None:
        """Send the batch and wait until the broker acknowledged every message."""
        topic = self.outbox.topic
        futures = [self.producer.send(topic, key=m.key, value=m.value) for m in batch]
        self.producer.flush(timeout=_ACK_TIMEOUT_S)
        for future in futures:
            future.get(timeout=0)
        log.debug("event=published topic=%s count=%d last_position=%d",
                  topic, len(batch), batch[-1].position)  # fmt: skip

    def _topic_id(self) -> str | None:
        # kafka-python keeps the topic ids of its metadata on the producer's cluster object.
        self.producer.partitions_for(self.outbox.topic)
        topic_id = self.producer._metadata.topic_id(self.outbox.topic)
        return None if topic_id is None else str(topic_id)


def main() -> None:
    """Composition root: wire settings, the event store and a producer into a Relay; run it."""
    settings = Settings()
    configure_logging("relay")
    store = EventStore(settings.dsn)
    store.create_tables()

    def new_producer() -> KafkaProducer:
        return all_topics_metadata(
            KafkaProducer(
                bootstrap_servers=settings.bootstrap,
                client_id="crm-relay",
                acks="all",
                enable_idempotence=True,
                linger_ms=2,
                batch_size=256 * 1024,
                metadata_max_age_ms=2000,  # notice a recreated topic (new topic id) within seconds
                allow_auto_create_topics=False,
            )
        )

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    relays = [
        Relay(EventOutbox(store), store, new_producer),
        Relay(alert_outbox(settings.dsn), store, new_producer),
        Relay(intake_outbox(settings.dsn), store, new_producer),
    ]
    failed: list[str] = []
    threads = [
        threading.Thread(target=_run, args=(relay, stop, failed), name=relay.outbox.topic)
        for relay in relays
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    finally:
        for relay in relays:
            relay.close()
        store.close()
    if failed:
        raise SystemExit(f"relay failed: {', '.join(failed)}")


def _run(relay: Relay, stop: threading.Event, failed: list[str]) -> None:
    """Run one relay; if it fails, stop the others too so the supervisor restarts the process."""
    try:
        relay.run(stop)
    except Exception:
        log.exception("event=relay_failed topic=%s", relay.outbox.topic)
        failed.append(relay.outbox.topic)
        stop.set()


if __name__ == "__main__":
    main()
