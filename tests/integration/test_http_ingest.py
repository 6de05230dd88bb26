"""POST /events and GET /health against the real broker and the real PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from api.app import create_app
from events.codec import encode
from events.envelope import validate_envelope
from events.topics import TOUCHPOINTS
from infra.broker import EmbeddedBroker
from infra.ports import free_port
from infra.settings import Settings
from tests.unit.examples import envelope

pytestmark = pytest.mark.integration

PARTITIONS = [TopicPartition(TOUCHPOINTS, p) for p in range(6)]
Offsets = dict[TopicPartition, int]


@pytest.fixture(scope="module")
def client(broker: EmbeddedBroker, database_url: str) -> Iterator[TestClient]:
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, DATABASE_URL=database_url)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def offline_client(database_url: str) -> Iterator[TestClient]:
    """The app pointed at a closed port: it must start anyway."""
    closed = f"127.0.0.1:{free_port()}"
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=closed, DATABASE_URL=database_url)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def consumer(broker: EmbeddedBroker) -> Iterator[KafkaConsumer]:
    kafka_consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False
    )
    kafka_consumer.assign(PARTITIONS)
    yield kafka_consumer
    kafka_consumer.close()


def purchase(customer_id: str = "C-0042", **fields: Any) -> dict[str, Any]:
    return envelope("purchase.made", customer_id=customer_id, event_id=str(uuid.uuid4()), **fields)


def end_offsets(consumer: KafkaConsumer) -> Offsets:
    offsets: Offsets = consumer.end_offsets(PARTITIONS)
    return offsets


def records_since(consumer: KafkaConsumer, before: Offsets, key: bytes) -> list[ConsumerRecord]:
    """The records with `key` written to crm.touchpoints after the `before` end offsets (the
    embedded broker reports end offsets too low, so earlier tests' records are skipped by key)."""
    after = end_offsets(consumer)
    for tp, offset in before.items():
        consumer.seek(tp, offset)
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + 10
    while any(consumer.position(tp) < after[tp] for tp in PARTITIONS):
        assert time.monotonic() < deadline, "records did not arrive"
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(r for r in batch if r.key == key)
    return records


def test_a_valid_event_is_produced_keyed_by_customer(
    client: TestClient, consumer: KafkaConsumer
) -> None:
    event = purchase("C-http-1")
    before = end_offsets(consumer)

    response = client.post("/events", json=event)

    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "event_ids": [event["event_id"]]}
    [record] = records_since(consumer, before, b"C-http-1")
    assert record.key == b"C-http-1"
    assert record.value == encode(validate_envelope(event))


def test_one_invalid_event_refuses_the_whole_list(
    client: TestClient, consumer: KafkaConsumer
) -> None:
    bad = purchase()
    bad["payload"]["total"] = 129.9
    before = end_offsets(consumer)

    response = client.post("/events", json=[purchase(), bad, purchase()])

    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "1 of 3 events are invalid; nothing was accepted"
    assert [(e["index"], e["code"], e["field"]) for e in body["errors"]] == [
        (1, "schema_violation", "payload.total")
    ]
    time.sleep(0.5)
    assert end_offsets(consumer) == before


def test_every_invalid_event_is_listed(client: TestClient) -> None:
    unknown = purchase(type="purchase.imagined")
    response = client.post("/events", json=[unknown, purchase(), purchase(customer_id="")])

    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [
        (0, "type"),
        (2, "customer_id"),
    ]


def test_an_omitted_event_id_is_generated_and_returned(
    client: TestClient, consumer: KafkaConsumer
) -> None:
    event = purchase("C-http-2")
    del event["event_id"]
    before = end_offsets(consumer)

    response = client.post("/events", json=[event])

    assert response.status_code == 202
    [event_id] = response.json()["event_ids"]
    assert str(uuid.UUID(event_id)) == event_id
    [record] = records_since(consumer, before, event["customer_id"].encode())
    assert record.value == encode(validate_envelope({**event, "event_id": event_id}))


def test_a_body_that_is_not_json_is_refused(client: TestClient) -> None:
    response = client.post(
        "/events", content=b"{not json", headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["code"] == "invalid_json"


@pytest.mark.parametrize(("count", "code"), [(0, "schema_violation"), (1001, "size_violation")])
def test_a_list_of_0_or_over_1000_events_is_refused(
    client: TestClient, count: int, code: str
) -> None:
    response = client.post("/events", json=[purchase() for _ in range(count)])

    assert response.status_code == 422
    assert response.json()["errors"][0]["code"] == code


def test_an_event_over_the_size_limit_is_refused(client: TestClient) -> None:
    event = purchase()
    event["payload"]["items"] = [
        {"sku": f"SKU-{i}", "name": "x" * 200, "quantity": 1, "unit_price": "1.00"}
        for i in range(400)
    ]

    response = client.post("/events", json=event)

    assert response.status_code == 422
    assert response.json()["errors"][0] | {"message": ""} == {
        "index": 0,
        "code": "size_violation",
        "field": "",
        "message": "",
    }


def test_health_is_ok_when_broker_and_database_are_reachable(
    client: TestClient, broker: EmbeddedBroker
) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["broker"] == {"reachable": True, "bootstrap": broker.bootstrap}
    assert body["database"] == {"reachable": True}
    assert set(body["lag"]) == {"crm-recorder", "crm-projector"}


def test_health_is_degraded_when_the_broker_is_unreachable(offline_client: TestClient) -> None:
    response = offline_client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["broker"]["reachable"] is False
    assert body["broker"]["error"]
    assert body["database"] == {"reachable": True}


def test_events_are_not_accepted_when_the_broker_is_unreachable(
    offline_client: TestClient,
) -> None:
    event = purchase()
    del event["event_id"]

    response = offline_client.post("/events", json=event)

    assert response.status_code == 503
    body = response.json()
    assert "retried safely with the same event_ids" in body["detail"]
    assert len(body["event_ids"]) == 1
