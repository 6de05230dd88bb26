"""What the complaint and merge intake tests share: their events, sending them, reading the
dead letters back, an in-process recorder for one exact batch, and the fixtures in
tests/integration/conftest.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from events import topics
from infra.eventstore import EventStore
from projections.complaints import COMPLAINT_TYPES
from projections.merges import CUSTOMER_MERGED
from services.intake_guards import backfill_cases, backfill_merges
from services.recorder import Recorder
from tests.integration.helpers import Service, end_offsets, query, recorded_ids, wait_until
from tests.unit.examples import envelope

MERGE_WAIT = 3.0
"""Seconds the recorder process (tests/integration/conftest.py) holds a merge whose target is
not recorded yet."""

Message = dict[str, Any]
DeadLetter = tuple[bytes | None, bytes, dict[str, bytes]]


def event(type_: str, customer: str, **payload: Any) -> Message:
    return envelope(type_, payload, event_id=str(uuid.uuid4()), customer_id=customer)


def call(customer: str) -> Message:
    return event("call.logged", customer, direction="inbound", duration_seconds=5)


def ids(messages: list[Message]) -> list[str]:
    return [str(m["event_id"]) for m in messages]


def send(producer: KafkaProducer, messages: list[Message], topic: str = topics.TOUCHPOINTS) -> None:
    for message in messages:
        key = str(message["customer_id"]).encode()
        producer.send(topic, key=key, value=orjson.dumps(message))
    producer.flush()


def deadletters(
    bootstrap: str,
    since: dict[TopicPartition, int],
    prefix: str,
    expected: int,
    settle: float = 1.0,
) -> list[DeadLetter]:
    """The dead letters of customers starting with `prefix` after the `since` offsets (the
    embedded broker reports end offsets too low: filtered by key), waiting for `expected` of
    them (30 s at most), then `settle` s more for any extra one."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    consumer.assign(list(since))
    for tp, offset in since.items():
        consumer.seek(tp, offset)
    found: list[DeadLetter] = []
    deadline, quiet_until = time.monotonic() + 30, None
    try:
        while time.monotonic() < (quiet_until or deadline):
            for batch in consumer.poll(timeout_ms=200).values():
                found.extend((r.key, r.value, dict(r.headers)) for r in batch
                             if (r.key or b"").startswith(prefix.encode()))  # fmt: skip
            if quiet_until is None and len(found) >= expected:
                quiet_until = time.monotonic() + settle
    finally:
        consumer.close()
    return found


def stream_ids(dsn: str, customer: str) -> list[str]:
    rows = query(dsn, "SELECT state FROM crm_events WHERE originator_id = %s "
                 "ORDER BY originator_version", (customer,))  # fmt: skip
    return [orjson.loads(bytes(state))["event_id"] for (state,) in rows]  # type: ignore[arg-type]


def wait_recorded(dsn: str, prefix: str, count: int, recorder: Service) -> None:
    wait_until(lambda: len(recorded_ids(dsn, prefix)) == count, timeout=60,
               what=f"{count} recorded", log=recorder.log)  # fmt: skip


def in_process(
    store: EventStore,
    producer: KafkaProducer,
    consumer: KafkaConsumer | None = None,
    merge_wait: float = 0.0,
) -> Recorder:
    """A recorder in this process; without a consumer, `process` is given its batches."""
    store.create_complaint_cases(COMPLAINT_TYPES, backfill_cases)
    store.create_customer_merges(CUSTOMER_MERGED, backfill_merges)
    return Recorder(consumer, producer, store, max_event_bytes=65536, batch_size=2000,  # type: ignore[arg-type]
                    merge_wait=merge_wait)  # fmt: skip


def batch(messages: list[Message], first_offset: int = 0) -> list[ConsumerRecord]:
    return [ConsumerRecord(topics.TOUCHPOINTS, 0, None, first_offset + i, 0, 0,
                           str(m["customer_id"]).encode(), orjson.dumps(m), [], None, 0, 0, 0)
            for i, m in enumerate(messages)]  # fmt: skip


def nothing_produced(bootstrap: str) -> Callable[[], None]:
    """A check, to call after the request, that crm.touchpoints got no record meanwhile."""
    before = end_offsets(bootstrap, topics.TOUCHPOINTS)

    def check() -> None:
        time.sleep(0.5)
        assert end_offsets(bootstrap, topics.TOUCHPOINTS) == before

    return check
