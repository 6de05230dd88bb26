"""Desertion alerts end to end: SDK → recorder → relay → projector (real processes, real broker and
PostgreSQL), the alerts in crm_alerts and on crm.alerts, the verdict in the 360; and, in process,
the detector's clock-driven scan with an injected clock.

Histories are laid out by hand, month by month relative to the real current month; every expected
figure below is worked out from them, not computed with projections.desertion.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition
from psycopg_pool import AsyncConnectionPool

from api.app import create_app
from events import topics
from events.producer import Item, TouchpointProducer
from infra.broker import EmbeddedBroker
from infra.eventstore import EventStore
from infra.postgres import EmbeddedPostgres
from infra.settings import Settings
from projections.desertion import DesertionRule
from projections.recorded import from_wire
from services.desertion import DesertionDetector
from services.projector import VIEWS, Projector
from tests.conftest import new_database
from tests.integration.helpers import (
    ROOT,
    Service,
    end_offsets,
    pipeline_env,
    projected_at_least,
    query,
    wait_until,
)
from tests.unit.examples import envelope

pytestmark = pytest.mark.integration

MODULES = ("services.recorder", "services.relay", "services.projector")
SETTLE_S = 6
NOW = datetime.now(UTC)


def month(offset: int, day: int = 15) -> datetime:
    """Noon UTC on `day` of the month `offset` months from the current one."""
    index = NOW.year * 12 + NOW.month - 1 + offset
    return datetime(index // 12, index % 12 + 1, day, 12, tzinfo=UTC)


def month_text(offset: int) -> str:
    return month(offset).strftime("%Y-%m")


@dataclass(frozen=True)
class Purchase:
    at: datetime
    total: str


def monthly(amount: str, first: int, last: int) -> list[Purchase]:
    return [Purchase(month(m), amount) for m in range(first, last + 1)]


# Baseline months are -10..-5, recent months -4..-1 (the current month 0 is not complete).
SHAPES: dict[str, tuple[int, list[Purchase]]] = {
    # name: (month of registration, purchases)
    "halved": (-11, monthly("1000.00", -10, -5) + monthly("500.00", -4, -1)),
    "stopped": (-11, monthly("1000.00", -10, -5)),
    "steady": (-11, monthly("1000.00", -10, -1)),
    "too_new": (-3, monthly("2000.00", -3, -1)),
}
FILLERS = 12
"""Steady customers besides the shapes: the load is then a catch-up of more than 100 events."""


@dataclass
class Stack:
    dsn: str
    bootstrap: str
    env: dict[str, str]
    services: dict[str, Service]
    sdk: TouchpointProducer
    api: TestClient
    alerts_start: dict[TopicPartition, int]

    def log(self) -> str:
        return "\n".join(f"--- {n}\n{s.log()[-4000:]}" for n, s in self.services.items())

    def send(
        self, events: list[tuple[datetime, str, str, dict[str, Any]]], twice: bool = False
    ) -> None:
        """Send (occurred_at, customer, method, fields) in occurred_at order, like a bulk import."""
        for at, customer_id, method, fields in sorted(events, key=lambda e: (e[0], e[1])):
            event_id = str(uuid.uuid4())
            for _ in range(2 if twice else 1):
                getattr(self.sdk, method)(customer_id, occurred_at=at, event_id=event_id, **fields)
        assert self.sdk.flush(timeout=60) == 0

    def wait_projected(self, versions: dict[str, int]) -> None:
        wait_until(lambda: projected_at_least(self.dsn, versions), timeout=90,
                   what=f"{len(versions)} customers projected", log=self.log)  # fmt: skip

    def wait_judged(self, versions: dict[str, int]) -> None:
        """Until each customer's verdict was judged on (at least) the given version."""

        def done() -> bool:
            rows = query(
                self.dsn,
                "SELECT customer_id, judged_version FROM crm_desertion WHERE customer_id = ANY(%s)",
                (list(versions),),
            )
            got = {str(c): int(v) for c, v in rows}  # type: ignore[call-overload]
            return all(got.get(c, 0) >= v for c, v in versions.items())

        wait_until(done, timeout=90, what=f"{len(versions)} customers judged", log=self.log)


def history(customer_id: str, registered: int, purchases: list[Purchase]) -> list[Any]:
    events: list[Any] = [(month(registered, 1), customer_id, "customer_registered", {"name": "A"})]
    for n, p in enumerate(purchases):
        items = [Item(sku="SKU-1", quantity=1, unit_price=p.total)]
        fields = {"order_id": f"O-{n}", "items": items, "total": p.total, "currency": "EUR"}
        events.append((p.at, customer_id, "purchase_made", fields))
    return events


def population(prefix: str) -> tuple[list[Any], dict[str, int]]:
    """The shapes and the fillers: their events, and each customer's number of events."""
    customers = {f"{prefix}{name}": shape for name, shape in SHAPES.items()}
    customers |= {f"{prefix}filler-{i}": SHAPES["steady"] for i in range(FILLERS)}
    events = [e for c, (reg, purchases) in customers.items() for e in history(c, reg, purchases)]
    return events, {c: 1 + len(purchases) for c, (_, purchases) in customers.items()}


def alerts_of(dsn: str, prefix: str) -> list[tuple[str, str, dict[str, Any], str]]:
    """(customer, kind, alert document, status) of the alerts of customers with the prefix."""
    rows = query(
        dsn,
        "SELECT customer_id, kind, alert, status FROM crm_alerts WHERE customer_id LIKE %s "
        "ORDER BY seq",
        (prefix + "%",),
    )
    return [(str(c), str(k), a, str(s)) for c, k, a, s in rows]  # type: ignore[misc]


@pytest.fixture(scope="module")
def stack(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("desertion-logs")
    with new_database(postgres) as dsn:
        env = pipeline_env(
            broker.bootstrap,
            dsn,
            CRM_DESERTION_SETTLE_SECONDS=str(SETTLE_S),
            # each part of a load below is a catch-up, however the pipeline batches it
            CRM_DESERTION_CATCH_UP_EVENTS="40",
        )
        alerts_start = end_offsets(broker.bootstrap, topics.ALERTS)
        services = {m: Service(m, env, logs / f"{m}.log").start() for m in MODULES}
        settings = Settings(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, DATABASE_URL=dsn)
        spool = tmp_path_factory.mktemp("desertion-spool")
        try:
            with (
                TouchpointProducer(broker.bootstrap, source="test", spool_dir=spool) as sdk,
                TestClient(create_app(settings)) as api,
            ):
                yield Stack(dsn, broker.bootstrap, env, services, sdk, api, alerts_start)
        finally:
            for service in services.values():
                service.stop()


@pytest.fixture(scope="module")
def loaded(stack: Stack) -> str:
    """The shapes loaded as one catch-up, in time order, in two parts: the second part (the
    recent months) is sent once the first is projected, as a naive detector would judge it."""
    prefix = f"s{uuid.uuid4().hex[:6]}-"
    events, versions = population(prefix)
    cut = month(-4, 1)
    first = [e for e in events if e[0] < cut]
    stack.send(first)
    stack.wait_projected({c: sum(1 for e in first if e[1] == c) for c in versions})
    stack.send([e for e in events if e[0] >= cut])
    stack.wait_projected(versions)
    stack.wait_judged(versions)
    return prefix


def test_the_halved_and_the_stopped_customer_are_alerted_once_the_steady_and_new_ones_never(
    stack: Stack, loaded: str
) -> None:
    alerts = alerts_of(stack.dsn, loaded)

    assert sorted((c.removeprefix(loaded), k) for c, k, _, _ in alerts) == [
        ("halved", "customer.deserting"),
        ("stopped", "customer.deserting"),
    ], "nothing raised and resolved within the catch-up, nothing for steady or new customers"
    halved = next(doc for c, _, doc, _ in alerts if c == f"{loaded}halved")
    baseline = {month_text(m): "1000.00" for m in range(-10, -4)}
    recent = {month_text(m): "500.00" for m in range(-4, 0)}
    assert halved["details"] == {
        "currency": "EUR",
        "baseline_monthly": "1000.00",
        "recent_monthly": "500.00",
        "drop_ratio": "0.5000",
        "months": baseline | recent,
        "episode": 1,
    }
    assert "coupon" in halved["suggested_action"]
    stopped = next(doc for c, _, doc, _ in alerts if c == f"{loaded}stopped")
    assert (stopped["details"]["recent_monthly"], stopped["details"]["drop_ratio"]) == (
        "0.00",
        "0.0000",
    )
    assert all(status == "open" for *_, status in alerts)


def test_the_360_shows_the_churn_risk_and_the_monthly_spend(stack: Stack, loaded: str) -> None:
    states = {}
    for name in SHAPES:
        answer = stack.api.get(f"/customers/{loaded}{name}")
        assert answer.status_code == 200, answer.text
        states[name] = answer.json()["churn_risk"]["state"]
        by_month = answer.json()["purchases"]["by_month"]["EUR"]
        sent = {p.at.strftime("%Y-%m"): Decimal(p.total) for p in SHAPES[name][1]}
        assert {m: Decimal(v) for m, v in by_month.items()} == sent

    assert states == {
        "halved": "deserting",
        "stopped": "deserting",
        "steady": "steady",
        "too_new": "too_new",
    }
    risk = stack.api.get(f"/customers/{loaded}halved").json()["churn_risk"]
    assert (risk["deserting"], risk["episodes"]) == (True, 1)
    assert list(risk["months"]) == [month_text(m) for m in range(-10, 0)]


def test_every_alert_is_on_crm_alerts_with_the_alert_contract(stack: Stack, loaded: str) -> None:
    logged = {doc["alert_id"]: doc for _, _, doc, _ in alerts_of(stack.dsn, loaded)}
    consumer = KafkaConsumer(bootstrap_servers=stack.bootstrap, consumer_timeout_ms=2000)
    consumer.assign(list(stack.alerts_start))
    for partition, offset in stack.alerts_start.items():
        consumer.seek(partition, offset)
    seen: dict[str, dict[str, Any]] = {}

    def read() -> bool:
        for message in consumer:
            doc = orjson.loads(message.value)
            if doc["customer_id"].startswith(loaded):
                assert message.key == doc["customer_id"].encode()
                seen[doc["alert_id"]] = doc
        return seen.keys() >= logged.keys()

    try:
        wait_until(read, timeout=60, what="the alerts on crm.alerts", log=stack.log)
    finally:
        consumer.close()
    assert seen == logged


def test_a_late_purchase_into_the_baseline_completes_a_drop_and_is_judged_at_once(
    stack: Stack, loaded: str
) -> None:
    """Outside a catch-up one purchase is judged as it is projected: a customer who spent 50 a
    month (under the minimum) and nothing lately is deserting once an order of 6,000 from the
    baseline months is recorded late (baseline (6 x 50 + 6000) / 6 = 1050, recent 0)."""
    customer_id = f"{loaded}late"
    stack.send(history(customer_id, -11, monthly("50.00", -10, -5)))
    stack.wait_judged({customer_id: 7})
    assert alerts_of(stack.dsn, customer_id) == []

    stack.send([(month(-8, 20), customer_id, "purchase_made", {
        "order_id": "O-late", "items": [Item(sku="SKU-1", quantity=1, unit_price="6000.00")],
        "total": "6000.00", "currency": "EUR"})])  # fmt: skip
    stack.wait_judged({customer_id: 8})

    [(_, kind, doc, _)] = alerts_of(stack.dsn, customer_id)
    assert kind == "customer.deserting"
    assert (doc["details"]["baseline_monthly"], doc["details"]["recent_monthly"]) == (
        "1050.00",
        "0.00",
    )


def test_one_alert_per_episode_through_duplicates_a_replay_and_a_kill_9_of_the_detector(
    stack: Stack, loaded: str
) -> None:
    """Another population, every event sent twice (same event_id), the projector (which runs the
    detector) killed with SIGKILL in the middle of the catch-up and started again, then the
    customer 360 rebuilt from the event store: still one alert per deserting customer."""
    prefix = f"k{uuid.uuid4().hex[:6]}-"
    events, versions = population(prefix)
    projector = stack.services["services.projector"]
    stack.send(events[: len(events) // 2], twice=True)
    projector.kill9()
    stack.send(events[len(events) // 2 :], twice=True)
    projector.start()
    stack.wait_projected(versions)
    stack.wait_judged(versions)
    before = alerts_of(stack.dsn, prefix)

    replay = subprocess.run(
        [sys.executable, "-m", "services.projector", "replay", "customer_360"],
        cwd=ROOT, env={**projector.env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr

    assert sorted((c.removeprefix(prefix), k) for c, k, _, _ in before) == [
        ("halved", "customer.deserting"),
        ("stopped", "customer.deserting"),
    ]
    assert alerts_of(stack.dsn, prefix) == before


# --- the clock alone, in process (real PostgreSQL, the projector's code, an injected clock) ----


class InProcess:
    """A fresh database with the event store's and the projector's tables; events are folded
    with the projector's code and the detector scans at whatever moment a test gives."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.versions: dict[str, int] = {}
        store = EventStore(dsn)
        store.create_tables()
        store.close()

    def apply(self, customer_id: str, purchases: list[Purchase]) -> None:
        events = []
        for p in purchases:
            version = self.versions[customer_id] = self.versions.get(customer_id, 0) + 1
            item = {"sku": "SKU-1", "quantity": 1, "unit_price": p.total}
            payload = {"order_id": f"O-{version}", "currency": "EUR", "total": p.total,
                       "items": [item]}  # fmt: skip
            data = envelope("purchase.made", payload, event_id=str(uuid.uuid4()),
                            customer_id=customer_id, occurred_at=p.at.isoformat())  # fmt: skip
            events.append(from_wire(data | {"position": version, "version": version}))

        async def run() -> None:
            async with self.pool() as pool:
                await Projector(pool, list(VIEWS.values())).apply(events)

        asyncio.run(run())

    def scan(self, now: datetime) -> int:
        async def run() -> int:
            async with self.pool() as pool:
                return await DesertionDetector(pool, DesertionRule(), lambda: now).scan(now)

        return asyncio.run(run())

    def pool(self) -> AsyncConnectionPool[Any]:
        return AsyncConnectionPool(self.dsn, min_size=1, max_size=2, open=False)


@pytest.fixture
def in_process(fresh_database: str) -> InProcess:
    return InProcess(fresh_database)


def test_a_silent_customer_is_caught_by_the_clock_alone(in_process: InProcess) -> None:
    """1,000 every month up to last month, then nothing. Next month the recent months hold
    3 x 1000 + 0 (750, 75%): steady; the month after, 2 x 1000 + 2 x 0 (500, 50%): deserting."""
    in_process.apply("C-silent", monthly("1000.00", -10, -1))

    assert in_process.scan(NOW) == 0
    assert in_process.scan(month(1)) == 0
    assert in_process.scan(month(2)) == 1
    assert in_process.scan(month(2, day=20)) == 0, "the same episode is not alerted again"

    [(_, kind, doc, status)] = alerts_of(in_process.dsn, "C-silent")
    assert (kind, status, doc["details"]["recent_monthly"]) == (
        "customer.deserting",
        "open",
        "500.00",
    )


def test_recovery_ends_the_episode_and_a_later_drop_is_a_new_one(in_process: InProcess) -> None:
    in_process.apply("C-back", monthly("1000.00", -10, -1))
    assert in_process.scan(month(2)) == 1  # silent for two months: deserting (episode 1)

    in_process.apply("C-back", monthly("1000.00", 0, 3))  # buying again, as before
    assert in_process.scan(month(4)) == 1  # recent months 0..3: 1000 each: resolved

    assert in_process.scan(month(6)) == 1  # silent again since month 4: episode 2

    alerts = alerts_of(in_process.dsn, "C-back")
    assert [(k, d["details"]["episode"], s) for _, k, d, s in alerts] == [
        ("customer.deserting", 1, "resolved"),
        ("customer.deserting.resolved", 1, "resolved"),
        ("customer.deserting", 2, "open"),
    ]
    assert len({d["alert_id"] for _, _, d, _ in alerts}) == 3
