"""GET /customers/{id}, GET /customers/{id}/timeline and the lag parts of GET /health against
the real PostgreSQL (and the real broker for /health)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from psycopg.types.json import Jsonb

from api.app import create_app
from events.catalog import CATALOG
from events.envelope import validate_envelope
from events.topics import EVENTS, TOUCHPOINTS
from infra.broker import EmbeddedBroker
from infra.eventstore import EventStore
from infra.ports import free_port
from infra.settings import Settings
from projections.balance import BALANCE
from projections.customer_360 import CUSTOMER_360
from projections.desertion import CREATE_DESERTION_SQL
from projections.recorded import RecordedEvent
from projections.views import ADVANCE_PROGRESS_SQL, PROGRESS_SQL
from tests.unit.examples import VALID_PAYLOADS, envelope

pytestmark = pytest.mark.integration

CUSTOMER = "C-360"
LATE = "C-LATE"
"""Recorded, not projected yet."""
REFUND = {**VALID_PAYLOADS["purchase.refunded"], "amount": "14.95"}
SECOND_PURCHASE = {**VALID_PAYLOADS["purchase.made"], "order_id": "O-1002", "total": "70.10"}
SENT: list[tuple[str, dict[str, Any] | None]] = [
    ("customer.registered", None),
    ("call.logged", None),
    ("purchase.made", None),
    ("purchase.made", SECOND_PURCHASE),
    ("purchase.refunded", REFUND),
    ("complaint.filed", None),
    ("email.logged", None),
]


@dataclass(frozen=True)
class Setup:
    database_url: str
    sent: list[dict[str, Any]]
    """The wire-form envelopes of CUSTOMER, in recording order."""
    positions: list[int]
    """Their global positions in the event store."""


@dataclass(frozen=True)
class World:
    client: TestClient
    setup: Setup
    recorder_group: str


def wire_events() -> list[dict[str, Any]]:
    return [
        envelope(
            type_,
            payload,
            customer_id=CUSTOMER,
            event_id=str(uuid.uuid4()),
            occurred_at=f"2026-01-0{day}T10:00:00Z",
            correlation_id="case-1" if type_ == "complaint.filed" else None,
        )
        for day, (type_, payload) in enumerate(SENT, start=1)
    ]


def recorded(store: EventStore, customer_id: str) -> list[RecordedEvent]:
    return [
        RecordedEvent(n.id, n.originator_version, validate_envelope(orjson.loads(n.state)))
        for n in store.read(0, 100)
        if n.originator_id == customer_id
    ]


def topic_id(bootstrap: str, topic: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return str(admin.describe_topics([topic])[0]["topic_id"])
    finally:
        admin.close()


@pytest.fixture
def setup(fresh_database: str, broker: EmbeddedBroker) -> Setup:
    """CUSTOMER's 7 events recorded and projected, LATE's event recorded only, the relay at
    position 6 of the current crm.events (8 for an older incarnation), the projector at 7."""
    sent = wire_events()
    store = EventStore(fresh_database)
    store.create_tables()
    store.record([validate_envelope(e) for e in sent])
    store.record([validate_envelope(envelope("web.visited", customer_id=LATE))])
    events = recorded(store, CUSTOMER)
    store.track(f"relay:{EVENTS}:{topic_id(broker.bootstrap, EVENTS)}", 6)
    store.track(f"relay:{EVENTS}:{uuid.uuid4()}", 8)
    store.close()
    with psycopg.connect(fresh_database) as conn:
        for view in (CUSTOMER_360, BALANCE):
            state = None
            for event in events:
                state = view.apply(state, event)
            conn.execute(view.create_sql())
            doc = Jsonb(view.to_json(state))
            conn.execute(view.upsert_sql(), ([CUSTOMER], [7], [events[-1].position], [doc]))
        conn.execute(CREATE_DESERTION_SQL)  # created by the projector with the views
        conn.execute(PROGRESS_SQL)
        conn.execute(ADVANCE_PROGRESS_SQL, ("live", 7))
        conn.execute(ADVANCE_PROGRESS_SQL, ("replay", 8))
    return Setup(fresh_database, sent, [e.position for e in events])


@pytest.fixture
def world(setup: Setup, broker: EmbeddedBroker) -> Iterator[World]:
    """The app on `setup`'s database and the real broker, with a recorder group of its own."""
    group = f"test-recorder-{uuid.uuid4()}"
    settings = Settings(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
        DATABASE_URL=setup.database_url,
        recorder_group=group,
    )
    with TestClient(create_app(settings)) as client:
        yield World(client, setup, group)


def test_the_360_shows_the_figures_of_the_recorded_events(world: World) -> None:
    response = world.client.get(f"/customers/{CUSTOMER}")

    assert response.status_code == 200
    body = response.json()
    payloads = [(e["type"], e["payload"]) for e in world.setup.sent]
    spent = sum(Decimal(p["total"]) for t, p in payloads if t == "purchase.made") - sum(
        Decimal(p["amount"]) for t, p in payloads if t == "purchase.refunded"
    )
    assert list(body) == [  # the documented fields, in the documented order
        "customer_id", "version", "position", "profile", "touchpoints", "purchases",
        "complaints", "open_complaints", "satisfaction", "recent", "merged_customer_ids",
        "balance", "churn_risk", "offers", "segments",
    ]  # fmt: skip
    assert (body["customer_id"], body["version"]) == (CUSTOMER, len(world.setup.sent))
    assert body["position"] == world.setup.positions[-1]
    assert body["profile"]["name"] == VALID_PAYLOADS["customer.registered"]["name"]
    assert body["touchpoints"]["total"] == len(world.setup.sent)
    assert body["touchpoints"]["by_type"]["purchase.made"] == 2
    assert body["touchpoints"]["last_at"] == "2026-01-07T10:00:00Z"
    assert body["purchases"]["count"] == 2
    assert body["purchases"]["total_spent"] == {"EUR": str(spent)}
    assert body["complaints"] == {"open": 1, "total": 1}
    assert [r["event_id"] for r in body["recent"]] == [e["event_id"] for e in world.setup.sent][
        ::-1
    ]
    # no invoice: the refund of a known order is a credit on account
    assert body["balance"] == {
        "outstanding": {"EUR": f"-{REFUND['amount']}"},
        "overdue": {"EUR": "0"},
        "credit_limit": None,
        "available_credit": None,
        "currency": None,
    }
    assert body["churn_risk"] is None, "not judged: the detector has not seen the customer"
    # the offers view is not created in this database: nothing to offer yet
    assert body["offers"] == {"goes_well_with": [], "likely_next": []}
    assert body["segments"] == {
        "tier": None,
        "net_spend_12m": None,
        "tier_cuts_at": None,
        "interests": {"products": [], "categories": []},
    }


def test_unknown_and_not_yet_projected_customers_are_404(world: World) -> None:
    unknown = world.client.get("/customers/C-9")
    late = world.client.get(f"/customers/{LATE}")

    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "customer C-9 is unknown"}
    assert late.status_code == 404
    assert "recorded but not yet in the view" in late.json()["detail"]
    assert "retry" in late.json()["detail"]


def test_a_malformed_customer_id_is_422(world: World) -> None:
    for path in ("/customers/C%209", "/customers/C%209/timeline", f"/customers/{'x' * 65}"):
        response = world.client.get(path)

        assert response.status_code == 422, path
        assert "customer_id must be 1-64 characters" in response.json()["detail"]


def test_the_timeline_pages_through_the_recorded_events_newest_first(world: World) -> None:
    pages, before = [], None
    while True:
        params: dict[str, int] = {"limit": 3} | ({} if before is None else {"before": before})
        response = world.client.get(f"/customers/{CUSTOMER}/timeline", params=params)
        assert response.status_code == 200
        body = response.json()
        pages.append(body["events"])
        before = body["next_before"]
        if before is None:
            break

    assert [len(page) for page in pages] == [3, 3, 1]
    events = [event for page in pages for event in page]
    assert [e["position"] for e in events] == world.setup.positions[::-1]
    assert [e["version"] for e in events] == list(range(len(world.setup.sent), 0, -1))
    for event, sent in zip(events, world.setup.sent[::-1], strict=True):
        assert event["event_id"] == sent["event_id"]
        assert event["type"] == sent["type"]
        assert event["schema_version"] == CATALOG.current_version(sent["type"])
        assert event["payload"] == sent["payload"]
        assert event["occurred_at"] == sent["occurred_at"]
        assert event["source"] == sent["source"]
        assert event["correlation_id"] == sent["correlation_id"]


def test_the_timeline_refuses_unknown_customers_and_bad_limits(world: World) -> None:
    path = f"/customers/{CUSTOMER}/timeline"
    past_the_first = world.client.get(path, params={"before": world.setup.positions[0]})

    assert world.client.get("/customers/C-9/timeline").status_code == 404
    assert world.client.get(path, params={"limit": 0}).status_code == 422
    assert world.client.get(path, params={"limit": 501}).status_code == 422
    assert world.client.get(path, params={"limit": 500}).status_code == 200
    assert past_the_first.status_code == 200
    assert past_the_first.json() == {"customer_id": CUSTOMER, "events": [], "next_before": None}


def test_health_shows_consumer_lag_and_pipeline_positions(
    world: World, broker: EmbeddedBroker
) -> None:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    partitions = [
        TopicPartition(TOUCHPOINTS, p) for p in consumer.partitions_for_topic(TOUCHPOINTS)
    ]
    touchpoints_end = sum(consumer.end_offsets(partitions).values())
    consumer.close()

    response = world.client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    lag = body["lag"]
    assert set(lag) == {world.recorder_group, "crm-projector"}
    # nothing committed by this group yet: every record of crm.touchpoints is behind
    assert lag[world.recorder_group] == {"topic": TOUCHPOINTS, "lag": touchpoints_end}
    assert lag["crm-projector"]["topic"] == EVENTS
    assert lag["crm-projector"]["lag"] >= 0
    assert body["pipeline"] == {
        "event_store_position": 8,
        "relayed_position": 6,
        "projected_position": 7,
        "relay_lag": 2,
        "projector_lag": 1,
    }


def test_without_a_broker_health_has_no_lag_and_the_highest_relay_position(
    setup: Setup,
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=closed, DATABASE_URL=setup.database_url)

    with TestClient(create_app(settings)) as client:
        response = client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["lag"] is None
    assert body["database"] == {"reachable": True}
    assert body["pipeline"]["relayed_position"] == 8
    assert body["pipeline"]["relay_lag"] == 0


def test_views_not_created_yet_read_as_missing(fresh_database: str, broker: EmbeddedBroker) -> None:
    store = EventStore(fresh_database)
    store.create_tables()
    store.record([validate_envelope(envelope("web.visited", customer_id=LATE))])
    store.close()
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, DATABASE_URL=fresh_database)

    with TestClient(create_app(settings)) as client:
        late = client.get(f"/customers/{LATE}")
        health = client.get("/health").json()

    assert late.status_code == 404
    assert "not yet in the view" in late.json()["detail"]
    assert health["pipeline"]["event_store_position"] == 1
    assert health["pipeline"]["projected_position"] == 0
    assert health["pipeline"]["projector_lag"] == 1
