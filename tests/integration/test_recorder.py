"""The recorder against the real broker and PostgreSQL, run as a real process."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from events import topics
from events.producer import Item, TouchpointProducer
from infra.broker import EmbeddedBroker
from tests.integration.helpers import Service, query, recorded_ids, running, wait_until
from tests.unit.examples import VALID_PAYLOADS, envelope

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    """A customer id prefix of this test's own, so tests sharing the broker do not mix."""
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def recorder_env(broker: EmbeddedBroker, fresh_database: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "DATABASE_URL": fresh_database,
        "CRM_RECORDER_GROUP": f"recorder-{uuid.uuid4().hex[:8]}",
        "CRM_SESSION_TIMEOUT_MS": "3000",
    }


@pytest.fixture
def producer(broker: EmbeddedBroker) -> Iterator[KafkaProducer]:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    yield producer
    producer.close()


def call(customer_id: str, seq: int) -> dict[str, object]:
    """A valid call.logged envelope whose duration carries a sequence number."""
    return envelope(
        "call.logged",
        {"direction": "inbound", "duration_seconds": seq},
        event_id=str(uuid.uuid4()),
        customer_id=customer_id,
    )


def send(producer: KafkaProducer, messages: list[dict[str, object]]) -> None:
    for message in messages:
        key = str(message["customer_id"]).encode()
        producer.send(topics.TOUCHPOINTS, key=key, value=orjson.dumps(message))
    producer.flush()


def send_once(bootstrap: str, messages: list[dict[str, object]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        send(producer, messages)
    finally:
        producer.close()


def stream(dsn: str, customer_id: str) -> list[tuple[int, int, dict[str, object]]]:
    """(version, position, envelope) of a customer's stream, in version order."""
    rows = query(
        dsn,
        "SELECT originator_version, notification_id, state FROM crm_events "
        "WHERE originator_id = %s ORDER BY originator_version",
        (customer_id,),
    )
    return [(int(v), int(p), orjson.loads(bytes(s))) for v, p, s in rows]  # type: ignore[arg-type]


def test_events_are_recorded_per_customer_in_send_order_with_consecutive_versions(
    producer: KafkaProducer, recorder_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    customers = [f"{prefix}{n}" for n in range(10)]
    messages = [call(customers[i % 10], i) for i in range(300)]
    dsn = recorder_env["DATABASE_URL"]
    with running("services.recorder", recorder_env, tmp_path / "recorder.log") as recorder:
        send(producer, messages)
        wait_until(
            lambda: len(recorded_ids(dsn, prefix)) == 300, timeout=60, what="300", log=recorder.log
        )

    for customer in customers:
        recorded = stream(dsn, customer)
        sent = [m for m in messages if m["customer_id"] == customer]
        assert [version for version, _, _ in recorded] == list(range(1, len(sent) + 1))
        assert [e["event_id"] for _, _, e in recorded] == [m["event_id"] for m in sent]
        positions = [position for _, position, _ in recorded]
        assert positions == sorted(positions)


def test_duplicate_event_id_is_recorded_once(
    producer: KafkaProducer, recorder_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    original = call(f"{prefix}dup", 1)
    later = call(f"{prefix}dup", 2)
    dsn = recorder_env["DATABASE_URL"]
    with running("services.recorder", recorder_env, tmp_path / "recorder.log") as recorder:
        send(producer, [original, original, original])
        wait_until(lambda: len(recorded_ids(dsn, prefix)) == 1, timeout=60, what="the first")
        send(producer, [original, later, original])
        wait_until(
            lambda: len(recorded_ids(dsn, prefix)) == 2, timeout=60, what="later", log=recorder.log
        )
        send(producer, [original])
        sentinel = call(f"{prefix}dup", 3)
        send(producer, [sentinel])
        wait_until(lambda: len(recorded_ids(dsn, prefix)) == 3, timeout=60, what="the sentinel")

    assert [e["event_id"] for _, _, e in stream(dsn, f"{prefix}dup")] == [
        original["event_id"],
        later["event_id"],
        sentinel["event_id"],
    ]


def _end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return consumer.end_offsets(partitions)
    finally:
        consumer.close()


def _read_from(
    bootstrap: str, offsets: dict[TopicPartition, int], count: int, key: bytes
) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    """`count` records with `key` from `offsets` on (the embedded broker reports end offsets
    too low, so records of earlier tests can come first: they are skipped by key)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=20000)
    consumer.assign(list(offsets))
    for tp, offset in offsets.items():
        consumer.seek(tp, offset)
    found = []
    try:
        for record in consumer:
            if record.key != key:
                continue
            found.append((record.key, record.value, dict(record.headers)))
            if len(found) == count:
                break
    finally:
        consumer.close()
    return found


def _float_money(customer: str) -> bytes:
    payload = {"order_id": "o1", "amount": 12.5, "currency": "EUR"}
    return orjson.dumps(envelope("purchase.refunded", payload, customer_id=customer))


def _oversized(customer: str) -> bytes:
    payload = {"direction": "inbound", "duration_seconds": 1, "notes": "x" * 70_000}
    return orjson.dumps({**call(customer, 1), "payload": payload})


BAD_MESSAGES: dict[str, Callable[[str], bytes]] = {
    "invalid_json": lambda c: b'{"event_id": "x", "type": ',
    "schema_violation": _float_money,
    "unknown_type": lambda c: orjson.dumps({**call(c, 1), "type": "coupon.sent"}),
    "unsupported_version": lambda c: orjson.dumps({**call(c, 1), "schema_version": 9}),
    "size_violation": _oversized,
}


def test_each_contract_breach_goes_to_the_deadletter_topic_and_the_pipeline_goes_on(
    broker: EmbeddedBroker,
    producer: KafkaProducer,
    recorder_env: dict[str, str],
    prefix: str,
    tmp_path: Path,
) -> None:
    customer = f"{prefix}bad"
    before = _end_offsets(broker.bootstrap, topics.DEADLETTER)
    bad = {code: make(customer) for code, make in BAD_MESSAGES.items()}
    good = call(customer, 7)
    dsn = recorder_env["DATABASE_URL"]
    with running("services.recorder", recorder_env, tmp_path / "recorder.log") as recorder:
        for value in bad.values():
            producer.send(topics.TOUCHPOINTS, key=customer.encode(), value=value)
        send(producer, [good])
        wait_until(
            lambda: len(recorded_ids(dsn, prefix)) == 1, timeout=60, what="good", log=recorder.log
        )

    deadlettered = _read_from(broker.bootstrap, before, len(bad), customer.encode())
    by_code = {headers["crm.error.code"].decode(): (key, value, headers)
               for key, value, headers in deadlettered}  # fmt: skip
    assert set(by_code) == set(bad)
    for code, (key, value, headers) in by_code.items():
        assert value == bad[code], "the original bytes are kept"
        assert key == customer.encode()
        assert headers["crm.source.topic"] == topics.TOUCHPOINTS.encode()
        assert int(headers["crm.source.offset"]) >= 0
        assert 0 <= int(headers["crm.source.partition"]) < 6
        assert headers["crm.error.message"]
    assert b"payload.amount" in by_code["schema_violation"][2]["crm.error.message"]
    assert [e["event_id"] for _, _, e in stream(dsn, customer)] == [good["event_id"]]


def test_kill_9_of_the_recorder_mid_stream_records_every_event_exactly_once(
    producer: KafkaProducer, recorder_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    customers = [f"{prefix}{n}" for n in range(500)]
    messages = [call(customers[i % 500], i) for i in range(20_000)]
    dsn = recorder_env["DATABASE_URL"]
    send(producer, messages)
    recorder = Service("services.recorder", recorder_env, tmp_path / "recorder.log").start()
    try:
        wait_until(lambda: len(recorded_ids(dsn, prefix)) >= 2_000, timeout=120, what="2,000",
                   log=recorder.log)  # fmt: skip
        recorder.kill9()
        assert len(recorded_ids(dsn, prefix)) < 20_000, "killed mid-stream"
        recorder.start()
        wait_until(lambda: len(recorded_ids(dsn, prefix)) == 20_000, timeout=180,
                   what="all 20,000", log=recorder.log)  # fmt: skip
    finally:
        recorder.stop()

    assert sorted(recorded_ids(dsn, prefix)) == sorted(str(m["event_id"]) for m in messages)
    for customer in customers[:50]:
        recorded = stream(dsn, customer)
        assert [v for v, _, _ in recorded] == list(range(1, 41))
        assert [e["payload"]["duration_seconds"] for _, _, e in recorded] == sorted(  # type: ignore[index]
            m["payload"]["duration_seconds"]  # type: ignore[index]
            for m in messages
            if m["customer_id"] == customer
        )


def test_recording_stays_correct_when_the_broker_restarts_empty(
    broker: EmbeddedBroker,
    restart_broker: Callable[[], None],
    recorder_env: dict[str, str],
    prefix: str,
    tmp_path: Path,
) -> None:
    first = [call(f"{prefix}{i % 20}", i) for i in range(1_000)]
    second = [call(f"{prefix}{i % 20}", 1_000 + i) for i in range(1_000)]
    dsn = recorder_env["DATABASE_URL"]
    with running("services.recorder", recorder_env, tmp_path / "recorder.log") as recorder:
        send_once(broker.bootstrap, first)
        wait_until(lambda: len(recorded_ids(dsn, prefix)) == 1_000, timeout=60, what="first",
                   log=recorder.log)  # fmt: skip
        restart_broker()
        # New events land at offsets the old topic had already used; resends are no-ops.
        send_once(broker.bootstrap, second + first[:200])
        wait_until(lambda: len(recorded_ids(dsn, prefix)) == 2_000, timeout=120,
                   what="second", log=recorder.log)  # fmt: skip

    expected = sorted(str(m["event_id"]) for m in first + second)
    assert sorted(recorded_ids(dsn, prefix)) == expected
    total = query(dsn, "SELECT count(*) FROM crm_events WHERE originator_id LIKE %s",
                  (prefix + "%",))[0][0]  # fmt: skip
    assert total == 2_000


LIFECYCLE = {"complaint.filed": 1, "complaint.assigned": 2, "complaint.resolved": 3,
             "complaint.reopened": 4}  # fmt: skip


def test_every_catalog_type_sent_through_the_sdk_is_recorded_as_sent(
    broker: EmbeddedBroker, recorder_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    customer = f"{prefix}sdk"
    dsn = recorder_env["DATABASE_URL"]
    with running("services.recorder", recorder_env, tmp_path / "recorder.log") as recorder:
        with TouchpointProducer(broker.bootstrap, source="sales", spool_dir=tmp_path) as sdk:
            # The customer the example merge names exists first (its events are on another
            # partition, so recorded before the merge is sent).
            into = VALID_PAYLOADS["customer.merged"]["into_customer_id"]
            sdk.customer_registered(into, name="Survivor")
            assert sdk.flush(timeout=30) == 0
            wait_until(lambda: bool(query(dsn, "SELECT 1 FROM crm_intake WHERE customer_id = %s",
                       (into,))), timeout=60, what="the survivor", log=recorder.log)  # fmt: skip
            # Complaint events in an order their case can take (assigned before resolved).
            ordered = sorted(VALID_PAYLOADS.items(), key=lambda item: LIFECYCLE.get(item[0], 0))
            ids = {type_: sdk.send(type_, customer, payload) for type_, payload in ordered}
            ids["typed"] = sdk.purchase_made(
                customer, order_id="O-9", items=[Item(sku="KB-01", quantity=2,
                unit_price=Decimal("49.95"))], total=Decimal("99.90"), currency="EUR",
            )  # fmt: skip
            assert sdk.flush(timeout=30) == 0
        wait_until(lambda: len(recorded_ids(dsn, prefix)) == len(ids), timeout=60,
                   what="every type", log=recorder.log)  # fmt: skip

    recorded = {e["event_id"]: e for _, _, e in stream(dsn, customer)}
    for type_, payload in VALID_PAYLOADS.items():
        stored = recorded[ids[type_]]
        assert (stored["type"], stored["payload"], stored["source"]) == (type_, payload, "sales")
    assert recorded[ids["typed"]]["payload"] == {
        "order_id": "O-9", "items": [{"sku": "KB-01", "quantity": 2, "unit_price": "49.95"}],
        "total": "99.90", "currency": "EUR",
    }  # fmt: skip
