"""The AlertSubscriber SDK against the real broker: alerts produced to crm.alerts the way the relay
publishes them (key = customer_id, value = the alert JSON).

crm.alerts is shared by the whole session and a new group reads it from the start, so every test
uses customers of its own and looks only at their alerts. A customer's alerts share a partition,
so they arrive in the order they were produced."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from kafka import KafkaProducer

from events import AlertSubscriber, ReceivedAlert
from events.metadata import all_topics_metadata
from events.topics import ALERTS
from infra.broker import EmbeddedBroker
from projections.alerts import CREDIT_LIMIT_EXCEEDED, CUSTOMER_DESERTING, INVOICE_OVERDUE, Alert

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DEADLINE_S = 60.0
SESSION_TIMEOUT_MS = 2000
"""Short: on the embedded broker a group join takes about half of it."""
SKIPPED = re.compile(r"event=alert_skipped .*partition=(?P<partition>\d+) offset=(?P<offset>\d+)")


def new_customer() -> str:
    return f"C-SUB-{uuid.uuid4().hex[:10]}"


def new_group() -> str:
    return f"test-alerts-{uuid.uuid4()}"


def alerts_of(customer_id: str, kinds: list[str]) -> list[Alert]:
    return [
        Alert.for_episode(
            kind,
            customer_id,
            f"episode-{i}",
            T0 + timedelta(hours=i),
            {"outstanding": f"{100 + i}.00", "currency": "EUR"},
            f"Call {customer_id} ({i}).",
        )
        for i, kind in enumerate(kinds)
    ]


@pytest.fixture(scope="module")
def producer(broker: EmbeddedBroker) -> Iterator[KafkaProducer]:
    kafka = all_topics_metadata(KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all"))
    yield kafka
    kafka.close()


def produce(producer: KafkaProducer, customer_id: str, values: list[bytes]) -> None:
    for value in values:
        producer.send(ALERTS, key=customer_id.encode(), value=value)
    producer.flush(timeout=30)


def produce_alerts(producer: KafkaProducer, alerts: list[Alert]) -> None:
    produce(producer, alerts[0].customer_id, [orjson.dumps(a.to_json()) for a in alerts])


def subscriber(
    broker: EmbeddedBroker, group_id: str, kinds: list[str] | None = None
) -> AlertSubscriber:
    return AlertSubscriber(
        broker.bootstrap,
        group_id=group_id,
        kinds=kinds,
        idle_timeout=1.0,
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )


def take(alerts: AlertSubscriber, customer_id: str, n: int) -> list[ReceivedAlert]:
    """The next `n` alerts of `customer_id` (others are passed over, as handled)."""
    deadline = time.monotonic() + DEADLINE_S
    taken: list[ReceivedAlert] = []
    while len(taken) < n:
        assert time.monotonic() < deadline, f"got {len(taken)} of {n} alerts"
        for alert in alerts:
            if alert.customer_id == customer_id:
                taken.append(alert)
                if len(taken) == n:
                    break
    return taken


def deadline_event() -> threading.Event:
    """An event set after DEADLINE_S: a `run` that should have stopped earlier fails, not hangs."""
    event = threading.Event()
    timer = threading.Timer(DEADLINE_S, event.set)
    timer.daemon = True
    timer.start()
    return event


def as_produced(alerts: list[Alert]) -> list[tuple[object, ...]]:
    return [
        (a.alert_id, a.kind, a.customer_id, a.raised_at, a.details, a.suggested_action)
        for a in alerts
    ]


def as_received(alerts: list[ReceivedAlert]) -> list[tuple[object, ...]]:
    return [
        (a.alert_id, a.kind, a.customer_id, a.raised_at, a.details, a.suggested_action)
        for a in alerts
    ]


def test_an_iterating_subscriber_receives_the_alerts_as_produced(
    broker: EmbeddedBroker, producer: KafkaProducer
) -> None:
    customer = new_customer()
    sent = alerts_of(customer, [CREDIT_LIMIT_EXCEEDED, INVOICE_OVERDUE, CUSTOMER_DESERTING])
    produce_alerts(producer, sent)

    with subscriber(broker, new_group()) as alerts:
        received = take(alerts, customer, 3)

    assert as_received(received) == as_produced(sent)
    assert all(a.raised_at.utcoffset() == timedelta(0) for a in received)
    assert len({a.partition for a in received}) == 1
    assert [a.offset for a in received] == sorted({a.offset for a in received})


def test_a_subscriber_gets_only_the_kinds_it_asked_for_and_commits_past_the_others(
    broker: EmbeddedBroker, producer: KafkaProducer
) -> None:
    customer, group = new_customer(), new_group()
    sent = alerts_of(customer, [INVOICE_OVERDUE, CREDIT_LIMIT_EXCEEDED, INVOICE_OVERDUE,
                                CUSTOMER_DESERTING, CREDIT_LIMIT_EXCEEDED])  # fmt: skip
    wanted = [a for a in sent if a.kind in (CREDIT_LIMIT_EXCEEDED, CUSTOMER_DESERTING)]
    produce_alerts(producer, sent)
    with subscriber(broker, group, kinds=[CREDIT_LIMIT_EXCEEDED, CUSTOMER_DESERTING]) as alerts:
        received = take(alerts, customer, len(wanted))
    later = alerts_of(customer, [INVOICE_OVERDUE] * 6)[5:]
    produce_alerts(producer, later)

    with subscriber(broker, group) as alerts:  # same group, every kind
        next_of_customer = take(alerts, customer, 1)

    assert as_received(received) == as_produced(wanted)
    assert as_received(next_of_customer) == as_produced(later)


def test_the_alert_being_handled_when_iteration_failed_is_delivered_again(
    broker: EmbeddedBroker, producer: KafkaProducer
) -> None:
    customer, group = new_customer(), new_group()
    sent = alerts_of(customer, [INVOICE_OVERDUE] * 5)
    produce_alerts(producer, sent)
    handled: list[ReceivedAlert] = []

    with pytest.raises(RuntimeError, match="handler failed"), subscriber(broker, group) as alerts:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:  # iteration stops whenever it is idle for 1 s
            for alert in alerts:
                if alert.customer_id != customer:
                    continue
                if len(handled) == 2:
                    raise RuntimeError("handler failed")  # on the third alert
                handled.append(alert)
    with subscriber(broker, group) as alerts:
        rest = take(alerts, customer, 3)

    assert as_received(handled) == as_produced(sent[:2])
    assert as_received(rest) == as_produced(sent[2:])


def test_close_without_commit_leaves_the_last_alert_for_the_group(
    broker: EmbeddedBroker, producer: KafkaProducer
) -> None:
    customer, group = new_customer(), new_group()
    sent = alerts_of(customer, [CREDIT_LIMIT_EXCEEDED] * 4)
    produce_alerts(producer, sent)
    first = subscriber(broker, group)
    handled_one = take(first, customer, 2)  # the first handled, the second not
    first.close(commit=False)

    with subscriber(broker, group) as alerts:
        rest = take(alerts, customer, 3)

    assert as_received(handled_one) == as_produced(sent[:2])
    assert as_received(rest) == as_produced(sent[1:])


def test_a_callback_that_raises_leaves_its_alert_for_the_group(
    broker: EmbeddedBroker, producer: KafkaProducer
) -> None:
    customer, group = new_customer(), new_group()
    sent = alerts_of(customer, [INVOICE_OVERDUE, CUSTOMER_DESERTING, INVOICE_OVERDUE])
    produce_alerts(producer, sent)
    calls: list[ReceivedAlert] = []

    def fails_on_the_second(alert: ReceivedAlert) -> None:
        if alert.customer_id == customer:
            calls.append(alert)
            if len(calls) == 2:
                raise ConnectionError("CRM desk unreachable")

    with pytest.raises(ConnectionError), subscriber(broker, group) as alerts:
        alerts.run(fails_on_the_second, stop_event=deadline_event())
    with subscriber(broker, group) as alerts:
        rest = take(alerts, customer, 2)

    assert as_received(calls) == as_produced(sent[:2])
    assert as_received(rest) == as_produced(sent[1:])


def test_run_delivers_a_failed_alert_again_and_commits_each_alert_its_callback_returned_from(
    broker: EmbeddedBroker, producer: KafkaProducer
) -> None:
    customer, group = new_customer(), new_group()
    sent = alerts_of(
        customer, [INVOICE_OVERDUE, CUSTOMER_DESERTING, INVOICE_OVERDUE, INVOICE_OVERDUE]
    )
    produce_alerts(producer, sent[:3])
    calls: list[ReceivedAlert] = []
    stop = deadline_event()

    def flaky(alert: ReceivedAlert) -> None:
        if alert.customer_id == customer:
            calls.append(alert)
            if len(calls) == 2:
                raise ConnectionError("CRM desk unreachable")  # the second alert, first time
            if len(calls) == 4:
                stop.set()

    with subscriber(broker, group) as alerts:
        with pytest.raises(ConnectionError):
            alerts.run(flaky, stop_event=stop)
        alerts.run(flaky, stop_event=stop)
    produce_alerts(producer, sent[3:])
    with subscriber(broker, group) as alerts:
        after_restart = take(alerts, customer, 1)

    assert as_received(calls) == as_produced([sent[0], sent[1], sent[1], sent[2]])
    assert as_received(after_restart) == as_produced(sent[3:])


def test_a_malformed_message_is_logged_and_skipped(
    broker: EmbeddedBroker, producer: KafkaProducer, caplog: pytest.LogCaptureFixture
) -> None:
    customer, group = new_customer(), new_group()
    good = alerts_of(customer, [INVOICE_OVERDUE] * 3)
    no_kind = {k: v for k, v in good[0].to_json().items() if k != "kind"}
    naive = {**good[0].to_json(), "raised_at": "2026-03-01T09:00:00"}
    produce(producer, customer, [
        orjson.dumps(good[0].to_json()), b"{not json", orjson.dumps(no_kind), b"[1, 2]",
        orjson.dumps(naive), orjson.dumps(good[1].to_json()),
    ])  # fmt: skip
    caplog.set_level(logging.WARNING, logger="events.alert_subscriber")
    with subscriber(broker, group) as alerts:
        received = take(alerts, customer, 2)
    produce_alerts(producer, good[2:])

    with subscriber(broker, group) as alerts:
        after = take(alerts, customer, 1)

    assert as_received(received) == as_produced(good[:2])
    partition, first = received[0].partition, received[0].offset
    assert received[1].offset == first + 5
    skipped = {
        (int(m["partition"]), int(m["offset"]))
        for r in caplog.records
        if (m := SKIPPED.search(r.getMessage()))
    }
    assert skipped == {(partition, first + i) for i in range(1, 5)}
    assert as_received(after) == as_produced(good[2:])  # the skipped ones were committed
