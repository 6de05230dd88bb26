"""Relay: publishes every event of the event store, in position order, to crm.events.

Each message is the recorded envelope plus its global `position` and customer `version`, keyed by
customer id. At least once: the last published position is tracked in PostgreSQL only after the
broker acknowledged it, per incarnation of the topic (its topic id), so after a crash the relay
resumes where it was, and when the topic is recreated (the embedded broker restarted empty) it
publishes everything again. Consumers skip what they already applied by customer version.

New events are noticed through PostgreSQL LISTEN/NOTIFY, not by slow polling.

Run it with `python -m services.relay` (the `crm up` supervisor does).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence

import orjson
from eventsourcing.persistence import Notification
from kafka import KafkaProducer
from kafka.errors import KafkaError

from events import topics
from events.metadata import all_topics_metadata
from infra.eventstore import EventStore, relay_tracking_name
from infra.logs import configure_logging
from infra.settings import Settings

log = logging.getLogger("crm.relay")

BATCH = 2000
_IDLE_WAIT_S = 1.0
_ACK_TIMEOUT_S = 30.0


def relay_message(notification: Notification) -> tuple[bytes, bytes]:
    """(key, value) on crm.events for one stored event."""
    data = orjson.loads(notification.state)
    data["position"] = notification.id
    data["version"] = notification.originator_version
    return str(notification.originator_id).encode(), orjson.dumps(data)


class Relay:
    """The read → publish → track loop. Dependencies are passed in (see `main`)."""

    def __init__(self, store: EventStore, new_producer: Callable[[], KafkaProducer]) -> None:
        self.store = store
        self.new_producer = new_producer
        self.producer = new_producer()

    def close(self) -> None:
        self.producer.close(timeout=5)

    def run(self, stop: threading.Event) -> None:
        topic_id, position = self._resume_point()
        with self.store.new_events() as wait_for_new:
            while not stop.is_set():
                if self._topic_id() != topic_id:  # recreated topic: publish everything again
                    topic_id, position = self._resume_point()
                batch = self.store.read(position, BATCH)
                if not batch:
                    wait_for_new(_IDLE_WAIT_S)
                    continue
                try:
                    self.publish(batch)
                except KafkaError as error:
                    # A restarted broker forgets idempotent producers: start afresh and resume
                    # from the last acknowledged position.
                    log.warning("event=publish_failed error=%r action=reconnect", error)
                    self.producer.close(timeout=0)
                    self.producer = self.new_producer()
                    stop.wait(_IDLE_WAIT_S)
                    topic_id, position = self._resume_point()
                    continue
                position = batch[-1].id
                self.store.track(relay_tracking_name(topic_id), position)
        log.info("event=stopped position=%d", position)

    def _resume_point(self) -> tuple[str | None, int]:
        topic_id = self._topic_id()
        position = self.store.tracked(relay_tracking_name(topic_id)) or 0
        log.info("event=resume topic_id=%s after_position=%d", topic_id, position)
        return topic_id, position

    def publish(self, batch: Sequence[Notification]) -> None:
        """Send the batch and wait until the broker acknowledged every message."""
        futures = [
            self.producer.send(topics.EVENTS, key=key, value=value)
            for key, value in map(relay_message, batch)
        ]
        self.producer.flush(timeout=_ACK_TIMEOUT_S)
        for future in futures:
            future.get(timeout=0)
        log.debug("event=published count=%d last_position=%d", len(batch), batch[-1].id)

    def _topic_id(self) -> str | None:
        # kafka-python keeps the topic ids of its metadata on the producer's cluster object.
        self.producer.partitions_for(topics.EVENTS)
        topic_id = self.producer._metadata.topic_id(topics.EVENTS)
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
    relay = Relay(store, new_producer)
    try:
        relay.run(stop)
    finally:
        relay.close()
        store.close()


if __name__ == "__main__":
    main()
