"""The balance and credit view end to end: SDK → recorder → relay → projector (real processes)
against the real broker and PostgreSQL, read through the API, and its alerts through crm_alerts
and crm.alerts.

Every expected figure is worked out by hand below from what each scenario sends; nothing here
calls projections.balance to compute an expectation. One pipeline serves the module; each test
uses customers of its own.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
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
from projections.balance import BALANCE
from projections.recorded import from_store
from services.projector import OVERDUE_PAGE, Projector, raise_overdue
from tests.conftest import new_database
from tests.integration.helpers import Service, end_offsets, pipeline_env, query, wait_until

pytestmark = pytest.mark.integration

MODULES = ("services.recorder", "services.relay", "services.projector")
ALERT_NAMESPACE = uuid.UUID("11ef527a-f56f-4707-a1f1-b8efd878d3d7")
"""The alert contract's namespace, fixed forever: alert ids are checked against it here."""
ALERT_FIELDS = {"alert_id", "kind", "customer_id", "raised_at", "details", "suggested_action"}
BUCKETS = ("current", "1-30", "31-60", "61-90", "90+")
AS_OF = date(2040, 6, 30)
"""The day the scenarios are aged on. Their invoices fall due in 2040, far from the real today,
so the projector's own overdue scan (real clock) never alerts them."""
NO_CREDIT = {"limit": None, "currency": None, "available": None, "payment_terms_days": None}
_MONEY = re.compile(r"-?[0-9]+(\.[0-9]+)?")


# --- what is sent -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One call of a TouchpointProducer method, without the customer id."""

    method: str
    fields: dict[str, Any]

    def send(self, sdk: TouchpointProducer, customer_id: str, event_id: str | None = None) -> str:
        options = {} if event_id is None else {"event_id": event_id}
        return str(getattr(sdk, self.method)(customer_id, **self.fields, **options))


def invoice(invoice_id: str, amount: str, due: date, currency: str = "EUR") -> Step:
    fields = {"invoice_id": invoice_id, "amount": amount, "currency": currency, "due_date": due}
    return Step("invoice_issued", fields)


def payment(
    payment_id: str, amount: str, currency: str = "EUR", invoice_id: str | None = None
) -> Step:
    fields = {"payment_id": payment_id, "amount": amount, "currency": currency}
    return Step(
        "payment_received", fields | ({} if invoice_id is None else {"invoice_id": invoice_id})
    )


def purchase(order_id: str, total: str, currency: str = "EUR") -> Step:
    items = [Item(sku="SKU-1", quantity=1, unit_price=total)]
    return Step(
        "purchase_made",
        {"order_id": order_id, "items": items, "total": total, "currency": currency},
    )


def refund(order_id: str, amount: str, currency: str = "EUR") -> Step:
    return Step("purchase_refunded", {"order_id": order_id, "amount": amount, "currency": currency})


def terms(limit: str, currency: str, days: int) -> Step:
    fields = {"credit_limit": limit, "currency": currency, "payment_terms_days": days}
    return Step("credit_terms_set", fields)


def call() -> Step:
    return Step("call_logged", {"direction": "inbound", "duration_seconds": 42})


# --- what is expected -------------------------------------------------------------------------


def ledger(
    invoiced: str = "0",
    paid: str = "0",
    refunded: str = "0",
    outstanding: str = "0",
    overdue: str = "0",
    aging: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The expected balance of one currency (buckets not named are zero)."""
    buckets = {b: Decimal((aging or {}).get(b, "0")) for b in BUCKETS}
    return {
        "invoiced": Decimal(invoiced),
        "paid": Decimal(paid),
        "refunded": Decimal(refunded),
        "outstanding": Decimal(outstanding),
        "overdue": Decimal(overdue),
        "aging": buckets,
    }


def open_invoice(
    invoice_id: str,
    amount: str,
    paid: str,
    outstanding: str,
    due: date,
    days: int,
    currency: str = "EUR",
) -> dict[str, Any]:
    return {
        "invoice_id": invoice_id,
        "currency": currency,
        "amount": Decimal(amount),
        "paid": Decimal(paid),
        "outstanding": Decimal(outstanding),
        "due_date": due.isoformat(),
        "days_overdue": days,
    }


def credit(limit: str, currency: str, available: str, days: int) -> dict[str, Any]:
    return {
        "limit": Decimal(limit),
        "currency": currency,
        "available": Decimal(available),
        "payment_terms_days": days,
    }


@dataclass(frozen=True)
class Scenario:
    """What one customer sends, in order, and its balance report on AS_OF, worked out by hand."""

    steps: tuple[Step, ...]
    balances: dict[str, dict[str, Any]]
    open_invoices: tuple[dict[str, Any], ...] = ()
    credit: dict[str, Any] = field(default_factory=lambda: NO_CREDIT)


def jul(day: int) -> date:
    return date(2040, 7, day)


SCENARIOS: dict[str, Scenario] = {
    # Two partial payments of one invoice; the first payment document sent again under a new
    # event_id (same payment_id) counts once.
    "partial": Scenario(
        steps=(
            invoice("INV-1", "1000.00", jul(10)),
            payment("P-1", "250.00", invoice_id="INV-1"),
            payment("P-2", "300.50", invoice_id="INV-1"),
            payment("P-1", "250.00", invoice_id="INV-1"),
        ),
        # 1000.00 - 250.00 - 300.50 = 449.50, not yet due (10 days to go)
        balances={"EUR": ledger("1000.00", "550.50", "0", "449.50", aging={"current": "449.50"})},
        open_invoices=(open_invoice("INV-1", "1000.00", "550.50", "449.50", jul(10), -10),),
    ),
    # Payments on account settle the open invoices oldest due first (a tie on the due date goes
    # to the invoice issued first), whatever order they were issued in.
    "unallocated": Scenario(
        steps=(
            invoice("INV-1", "100.00", jul(20)),
            invoice("INV-2", "200.00", jul(15)),
            invoice("INV-3", "300.00", jul(20)),
            payment("P-1", "250.00"),  # INV-2 (due 15th) 200 → settled; INV-1 50 of 100
            payment("P-2", "80.00"),  # INV-1 the other 50 → settled; INV-3 30 of 300
        ),
        balances={"EUR": ledger("600.00", "330.00", "0", "270.00", aging={"current": "270.00"})},
        open_invoices=(open_invoice("INV-3", "300.00", "30.00", "270.00", jul(20), -20),),
    ),
    # Overpaying an invoice leaves credit on account, spent on the next invoice when it comes.
    "overpayment": Scenario(
        steps=(
            invoice("INV-1", "100.00", jul(10)),
            payment("P-1", "150.00", invoice_id="INV-1"),  # settled, 50.00 in credit
            invoice("INV-2", "80.00", jul(31)),  # the 50.00 goes on it: 30.00 left
        ),
        balances={"EUR": ledger("180.00", "150.00", "0", "30.00", aging={"current": "30.00"})},
        open_invoices=(open_invoice("INV-2", "80.00", "50.00", "30.00", jul(31), -31),),
    ),
    # Refunds of known orders count and go on the open invoice; a refund sent before its order
    # waits for it; a refund of an order never seen counts nowhere (its currency gets a ledger).
    "refunds": Scenario(
        steps=(
            purchase("O-1", "120.00"),
            invoice("INV-1", "120.00", jul(10)),
            refund("O-1", "20.00"),  # INV-1: 20 paid
            refund("O-2", "15.00"),  # order not seen yet: held
            purchase("O-2", "15.00"),  # now it counts: INV-1 35 paid
            refund("O-9", "5.00", "USD"),  # never seen: held forever
        ),
        balances={
            "EUR": ledger("120.00", "0", "35.00", "85.00", aging={"current": "85.00"}),
            "USD": ledger(),
        },
        open_invoices=(open_invoice("INV-1", "120.00", "35.00", "85.00", jul(10), -10),),
    ),
    # Money never converts: a USD payment naming an EUR invoice is USD credit, spent on the USD
    # invoice; GBP paid on account leaves the customer in credit in GBP. The credit limit is in
    # USD and USD outstanding reaches it exactly (not above): no alert, nothing available.
    "currencies": Scenario(
        steps=(
            terms("100.00", "USD", 14),
            invoice("INV-1", "500.00", jul(10)),
            payment("P-1", "200.00", "USD", invoice_id="INV-1"),  # USD credit 200
            invoice("INV-2", "300.00", jul(12), "USD"),  # 200 of it paid by that credit
            payment("P-2", "50.00", "GBP"),
        ),
        balances={
            "EUR": ledger("500.00", "0", "0", "500.00", aging={"current": "500.00"}),
            "GBP": ledger("0", "50.00", "0", "-50.00"),
            "USD": ledger("300.00", "200.00", "0", "100.00", aging={"current": "100.00"}),
        },
        open_invoices=(
            open_invoice("INV-1", "500.00", "0", "500.00", jul(10), -10),
            open_invoice("INV-2", "300.00", "200.00", "100.00", jul(12), -12, "USD"),
        ),
        credit=credit("100.00", "USD", "0", 14),
    ),
    # Payments that arrive before the invoice they name: counted as paid at once, applied when
    # the invoice comes; one in another currency than its invoice becomes credit in its own.
    "out_of_order": Scenario(
        steps=(
            payment("P-1", "400.00", invoice_id="INV-1"),
            payment("P-2", "70.00", "USD", invoice_id="INV-2"),
            invoice("INV-1", "1000.00", jul(10)),  # 400 of it paid
            invoice("INV-2", "100.00", jul(11)),  # EUR: the USD 70 stays USD credit
        ),
        balances={
            "EUR": ledger("1100.00", "400.00", "0", "700.00", aging={"current": "700.00"}),
            "USD": ledger("0", "70.00", "0", "-70.00"),
        },
        open_invoices=(
            open_invoice("INV-1", "1000.00", "400.00", "600.00", jul(10), -10),
            open_invoice("INV-2", "100.00", "0", "100.00", jul(11), -11),
        ),
    ),
    # Aging on exact days: invoices 91, 90, 61, 60, 31, 30, 1, 0 days past due on AS_OF and one
    # due in 5 days; amounts are powers of two so every bucket sum is unambiguous. The payment
    # names the oldest (256.00 → 250.00 left).
    "aging": Scenario(
        steps=(
            invoice("D91", "256.00", date(2040, 3, 31)),
            invoice("D90", "128.00", date(2040, 4, 1)),
            invoice("D61", "64.00", date(2040, 4, 30)),
            invoice("D60", "32.00", date(2040, 5, 1)),
            invoice("D31", "16.00", date(2040, 5, 30)),
            invoice("D30", "8.00", date(2040, 5, 31)),
            invoice("D1", "4.00", date(2040, 6, 29)),
            invoice("D0", "2.00", date(2040, 6, 30)),
            invoice("NOT-DUE", "1.00", date(2040, 7, 5)),
            payment("P-1", "6.00", invoice_id="D91"),
        ),
        balances={
            "EUR": ledger(
                "511.00",
                "6.00",
                "0",
                "505.00",
                overdue="502.00",  # 12 + 48 + 192 + 250
                aging={
                    "current": "3.00",  # D0 2 + NOT-DUE 1
                    "1-30": "12.00",  # D1 4 + D30 8
                    "31-60": "48.00",  # D31 16 + D60 32
                    "61-90": "192.00",  # D61 64 + D90 128
                    "90+": "250.00",  # D91 256 - 6
                },
            )
        },
        open_invoices=(
            open_invoice("D91", "256.00", "6.00", "250.00", date(2040, 3, 31), 91),
            open_invoice("D90", "128.00", "0", "128.00", date(2040, 4, 1), 90),
            open_invoice("D61", "64.00", "0", "64.00", date(2040, 4, 30), 61),
            open_invoice("D60", "32.00", "0", "32.00", date(2040, 5, 1), 60),
            open_invoice("D31", "16.00", "0", "16.00", date(2040, 5, 30), 31),
            open_invoice("D30", "8.00", "0", "8.00", date(2040, 5, 31), 30),
            open_invoice("D1", "4.00", "0", "4.00", date(2040, 6, 29), 1),
            open_invoice("D0", "2.00", "0", "2.00", date(2040, 6, 30), 0),
            open_invoice("NOT-DUE", "1.00", "0", "1.00", date(2040, 7, 5), -5),
        ),
    ),
    # Credit limit 1000.00 EUR. Outstanding: 600, 1100 (episode 1 starts at version 3), 1200
    # (same episode), 900 (ends; the payment goes on INV-1, due first), 1150 (episode 2 starts
    # at version 6).
    "credit": Scenario(
        steps=(
            terms("1000.00", "EUR", 30),
            invoice("INV-1", "600.00", jul(10)),
            invoice("INV-2", "500.00", jul(11)),
            invoice("INV-3", "100.00", jul(12)),
            payment("P-1", "300.00"),
            invoice("INV-4", "250.00", jul(13)),
        ),
        balances={"EUR": ledger("1450.00", "300.00", "0", "1150.00", aging={"current": "1150.00"})},
        open_invoices=(
            open_invoice("INV-1", "600.00", "300.00", "300.00", jul(10), -10),
            open_invoice("INV-2", "500.00", "0", "500.00", jul(11), -11),
            open_invoice("INV-3", "100.00", "0", "100.00", jul(12), -12),
            open_invoice("INV-4", "250.00", "0", "250.00", jul(13), -13),
        ),
        credit=credit("1000.00", "EUR", "-150.00", 30),
    ),
    # Events, but no money: no ledger at all; a purchase alone: a ledger of zeros.
    "no_money": Scenario(steps=(call(), call()), balances={}),
    "purchase_only": Scenario(steps=(call(), purchase("O-1", "49.90")), balances={"EUR": ledger()}),
}
CREDIT_EPISODES = {3: "1100.00", 6: "1150.00"}
"""Version that starts each credit episode of the "credit" scenario → outstanding at its start."""


def alert_id(kind: str, customer_id: str, episode: str) -> str:
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{kind}|{customer_id}|{episode}"))


def decimals(value: Any) -> Any:
    """The document with every decimal string as a Decimal; money as a float fails."""
    if isinstance(value, float):
        raise AssertionError(f"money must be a decimal string, got the float {value!r}")
    if isinstance(value, dict):
        return {k: decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decimals(v) for v in value]
    if isinstance(value, str) and _MONEY.fullmatch(value):
        return Decimal(value)
    return value


def assert_report(doc: dict[str, Any], customer_id: str, scenario: Scenario, as_of: date) -> None:
    report = decimals(doc)
    assert report["customer_id"] == customer_id
    assert report["as_of"] == as_of.isoformat()
    assert report["balances"] == scenario.balances, customer_id
    assert report["open_invoices"] == list(scenario.open_invoices), customer_id
    assert report["credit"] == scenario.credit, customer_id


# --- the pipeline -----------------------------------------------------------------------------


@dataclass
class Stack:
    dsn: str
    bootstrap: str
    services: dict[str, Service]
    sdk: TouchpointProducer
    api: TestClient
    prefix: str
    alerts_start: dict[TopicPartition, int]
    """crm.alerts offsets when the module started: its alerts are after them."""

    def customer(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def log(self) -> str:
        return "\n".join(f"--- {n}\n{s.log()[-3000:]}" for n, s in self.services.items())

    def send(self, customer_id: str, steps: tuple[Step, ...]) -> None:
        for step in steps:
            step.send(self.sdk, customer_id)
        assert self.sdk.flush(timeout=60) == 0

    def wait_projected(self, versions: dict[str, int], timeout: float = 60) -> None:
        """Until the balance of each customer is at (at least) the given version."""
        wait_until(
            lambda: all(
                projected_versions(self.dsn, list(versions)).get(c, 0) >= v
                for c, v in versions.items()
            ),
            timeout=timeout,
            what=f"balances of {len(versions)} customers",
            log=self.log,
        )


def projected_versions(dsn: str, customer_ids: list[str]) -> dict[str, int]:
    rows = query(
        dsn,
        "SELECT customer_id, version FROM rm_balance WHERE customer_id = ANY(%s)",
        (customer_ids,),
    )
    return {str(c): int(v) for c, v in rows}  # type: ignore[call-overload]


TODAY_OFFSETS = {"overdue": -45, "due_soon": 10}


@pytest.fixture(scope="module")
def stack(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One pipeline for the module, every scenario sent through the SDK and projected.

    The "credit" customer is sent one event at a time, each projected before the next, so each
    event is a projector batch of its own and each credit episode is seen."""
    tag = uuid.uuid4().hex[:8]  # the customers' prefix
    logs = tmp_path_factory.mktemp("balance-logs")
    with new_database(postgres) as dsn:
        env = pipeline_env(broker.bootstrap, dsn)
        alerts_start = end_offsets(broker.bootstrap, topics.ALERTS)
        services = {m: Service(m, env, logs / f"{m}.log").start() for m in MODULES}
        spool = tmp_path_factory.mktemp("balance-spool")
        settings = Settings(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, DATABASE_URL=dsn)
        try:
            with (
                TouchpointProducer(broker.bootstrap, source="test", spool_dir=spool) as sdk,
                TestClient(create_app(settings)) as api,
            ):
                world = Stack(dsn, broker.bootstrap, services, sdk, api, f"b{tag}-", alerts_start)
                projector = services["services.projector"]
                # the start-up scan is done before any invoice exists: it alerts nothing of ours
                wait_until(lambda: "event=overdue_scanned" in projector.log(), timeout=60,
                           what="the projector's start-up overdue scan", log=world.log)  # fmt: skip
                for name, scenario in SCENARIOS.items():
                    if name != "credit":
                        world.send(world.customer(name), scenario.steps)
                world.send(world.customer("today"), today_steps(datetime.now(UTC).date()))
                credit_customer = world.customer("credit")
                for version, step in enumerate(SCENARIOS["credit"].steps, start=1):
                    world.send(credit_customer, (step,))
                    world.wait_projected({credit_customer: version})
                want = {world.customer(n): len(s.steps) for n, s in SCENARIOS.items()}
                world.wait_projected(want | {world.customer("today"): 4})
                yield world
        finally:
            for service in services.values():
                service.stop()


def today_steps(today: date) -> tuple[Step, ...]:
    """A customer with one invoice overdue in the real today (45 days: 31-60) and one not."""
    return (
        terms("2000.00", "EUR", 30),
        invoice("LATE", "500.00", today + timedelta(days=TODAY_OFFSETS["overdue"])),
        invoice("SOON", "200.00", today + timedelta(days=TODAY_OFFSETS["due_soon"])),
        payment("P-1", "100.00", invoice_id="LATE"),
    )


def raise_overdue_at(dsn: str, now: datetime, page: int = OVERDUE_PAGE) -> int:
    async def run() -> int:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
            return await raise_overdue(pool, now, page)

    return asyncio.run(run())


def alert_statuses(dsn: str, customer_id: str) -> dict[str, str]:
    rows = query(dsn, "SELECT alert_id, status FROM crm_alerts WHERE customer_id = %s",
                 (customer_id,))  # fmt: skip
    return {str(a): str(s) for a, s in rows}


def logged_alerts(dsn: str, prefix: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The alert documents of crm_alerts for customers with the prefix, in `seq` order."""
    rows = query(
        dsn,
        "SELECT alert FROM crm_alerts WHERE customer_id LIKE %s "
        "AND (%s::text IS NULL OR kind = %s) ORDER BY seq",
        (prefix + "%", kind, kind),
    )
    return [row[0] for row in rows]  # type: ignore[misc]


# --- the balance report -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_balance_report_on_a_given_day_has_the_figures_worked_out_from_what_was_sent(
    stack: Stack, name: str
) -> None:
    customer_id = stack.customer(name)
    answer = stack.api.get(f"/customers/{customer_id}/balance", params={"as_of": AS_OF.isoformat()})
    assert answer.status_code == 200, answer.text
    assert_report(answer.json(), customer_id, SCENARIOS[name], AS_OF)


def test_aging_moves_each_invoice_to_the_next_bucket_one_day_after_each_boundary(
    stack: Stack,
) -> None:
    """On AS_OF + 1 the invoices are 92, 91, 62, 61, 32, 31, 2, 1 and -4 days past due."""
    customer_id = stack.customer("aging")
    day = AS_OF + timedelta(days=1)
    doc = decimals(
        stack.api.get(f"/customers/{customer_id}/balance", params={"as_of": day.isoformat()}).json()
    )
    assert doc["balances"]["EUR"]["aging"] == {
        "current": Decimal("1.00"),  # NOT-DUE
        "1-30": Decimal("6.00"),  # D1 4 (2 days) + D0 2 (1 day)
        "31-60": Decimal("24.00"),  # D31 16 (32) + D30 8 (31)
        "61-90": Decimal("96.00"),  # D61 64 (62) + D60 32 (61)
        "90+": Decimal("378.00"),  # D91 250 (92) + D90 128 (91)
    }
    assert doc["balances"]["EUR"]["overdue"] == Decimal("504.00")
    assert doc["balances"]["EUR"]["outstanding"] == Decimal("505.00")
    assert [i["days_overdue"] for i in doc["open_invoices"]] == [92, 91, 62, 61, 32, 31, 2, 1, -4]


def test_an_unknown_customer_has_no_balance_and_no_360(stack: Stack) -> None:
    nobody = stack.customer("nobody")
    for path in (f"/customers/{nobody}/balance", f"/customers/{nobody}"):
        answer = stack.api.get(path)
        assert answer.status_code == 404, answer.text
        assert "unknown" in answer.json()["detail"]


def test_a_customer_never_invoiced_has_a_balance_of_zeros_not_an_error(stack: Stack) -> None:
    for name in ("no_money", "purchase_only"):
        customer_id = stack.customer(name)
        answer = stack.api.get(f"/customers/{customer_id}/balance")
        assert answer.status_code == 200, answer.text
        doc = decimals(answer.json())
        assert doc["balances"] == SCENARIOS[name].balances
        assert doc["open_invoices"] == []
        assert doc["credit"] == NO_CREDIT
        assert doc["as_of"] == datetime.now(UTC).date().isoformat()


def test_the_360_balance_summary_equals_the_balance_report_of_today(stack: Stack) -> None:
    today = datetime.now(UTC).date()
    for name in [*SCENARIOS, "today"]:
        customer_id = stack.customer(name)
        full = stack.api.get(f"/customers/{customer_id}/balance").json()
        screen = stack.api.get(f"/customers/{customer_id}")
        assert screen.status_code == 200, screen.text
        summary = screen.json()["balance"]
        assert summary == {
            "outstanding": {c: b["outstanding"] for c, b in full["balances"].items()},
            "overdue": {c: b["overdue"] for c, b in full["balances"].items()},
            "credit_limit": full["credit"]["limit"],
            "available_credit": full["credit"]["available"],
            "currency": full["credit"]["currency"],
        }, name
        if name in SCENARIOS:  # every invoice falls due in 2040: nothing overdue today
            expected = SCENARIOS[name].balances
            assert decimals(summary["outstanding"]) == {
                c: b["outstanding"] for c, b in expected.items()
            }
            assert decimals(summary["overdue"]) == dict.fromkeys(expected, Decimal(0))
    # LATE 500 - 100 paid = 400 overdue 45 days; SOON 200 due in 10 days
    summary = decimals(stack.api.get(f"/customers/{stack.customer('today')}").json()["balance"])
    assert summary == {
        "outstanding": {"EUR": Decimal("600.00")},
        "overdue": {"EUR": Decimal("400.00")},
        "credit_limit": Decimal("2000.00"),
        "available_credit": Decimal("1400.00"),
        "currency": "EUR",
    }
    doc = decimals(stack.api.get(f"/customers/{stack.customer('today')}/balance").json())
    assert doc["balances"]["EUR"]["aging"]["31-60"] == Decimal("400.00")
    assert doc["balances"]["EUR"]["aging"]["current"] == Decimal("200.00")
    assert [i["days_overdue"] for i in doc["open_invoices"]] == [45, -10]
    assert doc["as_of"] == today.isoformat()


# --- alerts -----------------------------------------------------------------------------------


def test_credit_limit_exceeded_is_logged_once_per_episode_not_once_per_event(stack: Stack) -> None:
    customer_id = stack.customer("credit")
    alerts = logged_alerts(stack.dsn, customer_id, "credit.limit.exceeded")
    assert [a["alert_id"] for a in alerts] == [
        alert_id("credit.limit.exceeded", customer_id, str(v)) for v in CREDIT_EPISODES
    ]
    for alert, outstanding in zip(alerts, CREDIT_EPISODES.values(), strict=True):
        assert set(alert) == ALERT_FIELDS
        assert alert["customer_id"] == customer_id
        assert alert["details"] == {
            "outstanding": outstanding,
            "limit": "1000.00",
            "currency": "EUR",
        }
        assert isinstance(alert["suggested_action"], str) and alert["suggested_action"]
        assert alert["raised_at"].endswith("Z")
    # at the limit, or above it in another currency than the limit's: no alert
    assert logged_alerts(stack.dsn, stack.customer("currencies")) == []
    # the first episode ended with the payment (outstanding 800.00): its alert is resolved
    assert alert_statuses(stack.dsn, customer_id) == {
        alert_id("credit.limit.exceeded", customer_id, "3"): "resolved",
        alert_id("credit.limit.exceeded", customer_id, "6"): "open",
    }


def test_an_overdue_alert_is_resolved_by_the_payment_that_settles_its_invoice(
    stack: Stack,
) -> None:
    customer_id = f"x{stack.customer('settled_late')}"  # not under the prefix: other tests
    # count the overdue alerts of every customer under it
    stack.send(customer_id, (invoice("LATE-1", "80.00", date(2040, 6, 1)),
                             invoice("LATE-2", "20.00", date(2040, 6, 2))))  # fmt: skip
    stack.wait_projected({customer_id: 2})
    raise_overdue_at(stack.dsn, datetime(2040, 6, 30, 12, 0, tzinfo=UTC))
    late_1, late_2 = (alert_id("invoice.overdue", customer_id, i) for i in ("LATE-1", "LATE-2"))
    assert alert_statuses(stack.dsn, customer_id) == {late_1: "open", late_2: "open"}

    stack.send(customer_id, (payment("P-LATE", "90.00"),))  # settles LATE-1, 10.00 to LATE-2
    stack.wait_projected({customer_id: 3})

    assert alert_statuses(stack.dsn, customer_id) == {late_1: "resolved", late_2: "open"}


def test_the_overdue_scan_alerts_each_invoice_past_due_once_and_none_not_yet_due(
    stack: Stack,
) -> None:
    aging, today = stack.customer("aging"), stack.customer("today")

    def overdue_ids() -> set[str]:
        return {a["alert_id"] for a in logged_alerts(stack.dsn, stack.prefix, "invoice.overdue")}

    def ids(customer_id: str, *invoices: str) -> set[str]:
        return {alert_id("invoice.overdue", customer_id, i) for i in invoices}

    past_due = ("D91", "D90", "D61", "D60", "D31", "D30", "D1")
    # in 2040 both invoices of "today" are past due too
    expected = ids(aging, *past_due) | ids(today, "LATE", "SOON")
    before = overdue_ids()
    assert before <= expected
    noon = datetime(2040, 6, 30, 12, 0, tzinfo=UTC)
    assert raise_overdue_at(stack.dsn, noon, page=1) == len(expected - before)  # page by page
    assert overdue_ids() == expected
    assert raise_overdue_at(stack.dsn, noon) == 0  # a second scan logs nothing again
    # 01:00 on 1 July at UTC+2 is still 30 June in UTC: D0 is due today, not overdue
    east = timezone(timedelta(hours=2))
    assert raise_overdue_at(stack.dsn, datetime(2040, 7, 1, 1, 0, tzinfo=east)) == 0
    assert overdue_ids() == expected
    # midnight UTC: D0 is one day past due; NOT-DUE (5 July) and every other scenario's invoice
    # (due 10 July or later) still are not
    midnight = datetime(2040, 7, 1, tzinfo=UTC)
    assert raise_overdue_at(stack.dsn, midnight) == 1
    assert raise_overdue_at(stack.dsn, midnight) == 0
    assert overdue_ids() == expected | ids(aging, "D0")

    by_invoice = {
        a["details"]["invoice_id"]: a for a in logged_alerts(stack.dsn, aging, "invoice.overdue")
    }
    assert set(by_invoice) == {*past_due, "D0"}
    amounts = {"D91": "256.00", "D90": "128.00", "D61": "64.00", "D60": "32.00", "D31": "16.00",
               "D30": "8.00", "D1": "4.00", "D0": "2.00"}  # fmt: skip
    due = {
        i["invoice_id"]: (i["due_date"], i["days_overdue"])
        for i in SCENARIOS["aging"].open_invoices
    }
    for invoice_id, alert in by_invoice.items():
        raised, days_then = (midnight, 1) if invoice_id == "D0" else (noon, due[invoice_id][1])
        assert alert == {
            "alert_id": alert_id("invoice.overdue", aging, invoice_id),
            "kind": "invoice.overdue",
            "customer_id": aging,
            "raised_at": raised.isoformat().replace("+00:00", "Z"),
            "details": {
                "invoice_id": invoice_id,
                "amount": amounts[invoice_id],
                "outstanding": "250.00" if invoice_id == "D91" else amounts[invoice_id],
                "currency": "EUR",
                "due_date": due[invoice_id][0],
                "days_overdue": days_then,
            },
            "suggested_action": alert["suggested_action"],
        }
        assert alert["suggested_action"]
    others = [n for n in SCENARIOS if n != "aging"]
    for name in others:
        assert logged_alerts(stack.dsn, stack.customer(name), "invoice.overdue") == []


def test_the_relay_publishes_every_logged_alert_to_crm_alerts_once_exactly_as_logged(
    stack: Stack,
) -> None:
    raise_overdue_at(stack.dsn, datetime(2040, 6, 30, 12, 0, tzinfo=UTC))  # overdue alerts too
    logged = logged_alerts(stack.dsn, stack.prefix)
    assert {a["kind"] for a in logged} == {"credit.limit.exceeded", "invoice.overdue"}
    wanted = {a["alert_id"] for a in logged}
    consumer = KafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
    consumer.assign(list(stack.alerts_start))
    for tp, offset in stack.alerts_start.items():
        consumer.seek(tp, offset)
    published: dict[str, list[dict[str, Any]]] = defaultdict(list)
    deadline = time.monotonic() + 30
    try:
        while True:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    key = (record.key or b"").decode()
                    if key.startswith(stack.prefix):
                        published[key].append(orjson.loads(record.value))
            seen = {a["alert_id"] for docs in published.values() for a in docs}
            at_end = all(
                consumer.position(tp) >= end
                for tp, end in consumer.end_offsets(list(stack.alerts_start)).items()
            )
            if wanted <= seen and at_end:
                break
            assert time.monotonic() < deadline, f"missing on crm.alerts: {wanted - seen}"
    finally:
        consumer.close()
    by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for alert in logged:
        by_customer[alert["customer_id"]].append(alert)
    # keyed by customer, each customer's alerts in the order logged, each once, unchanged
    assert dict(published) == dict(by_customer)
    for docs in published.values():
        for doc in docs:
            assert set(doc) == ALERT_FIELDS


# --- in-process projector with an injected clock, on the events the pipeline recorded -------------


def recorded_events(dsn: str, customer_id: str) -> list[Any]:
    store = EventStore(dsn)
    try:
        return [
            from_store(n.state, position=n.id, version=n.originator_version)
            for n in store.read(0, 1_000_000)
            if n.originator_id == customer_id
        ]
    finally:
        store.close()


def project_in_batches(dsn: str, batches: list[list[Any]], now: datetime) -> None:
    async def run() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
            projector = Projector(pool, [BALANCE], clock=lambda: now)
            for batch in batches:
                await projector.apply(batch)

    asyncio.run(run())


RAISED = datetime(2040, 6, 1, 8, 30, tzinfo=UTC)


def test_a_projector_with_an_injected_clock_logs_each_credit_episode_once_through_redelivery(
    stack: Stack, postgres: EmbeddedPostgres
) -> None:
    customer_id = stack.customer("credit")
    events = recorded_events(stack.dsn, customer_id)
    assert [e.version for e in events] == [1, 2, 3, 4, 5, 6]
    with new_database(postgres) as scratch:
        # one event per batch, then everything again (a redelivery)
        project_in_batches(scratch, [[e] for e in events] + [events], RAISED)
        alerts = logged_alerts(scratch, customer_id)
    assert alerts == [
        {
            "alert_id": alert_id("credit.limit.exceeded", customer_id, str(version)),
            "kind": "credit.limit.exceeded",
            "customer_id": customer_id,
            "raised_at": "2040-06-01T08:30:00Z",
            "details": {"outstanding": outstanding, "limit": "1000.00", "currency": "EUR"},
            "suggested_action": alerts[0]["suggested_action"],
        }
        for version, outstanding in CREDIT_EPISODES.items()
    ]


def test_a_credit_episode_that_starts_and_ends_within_one_projector_batch_is_still_alerted(
    stack: Stack, postgres: EmbeddedPostgres
) -> None:
    customer_id = stack.customer("credit")
    events = recorded_events(stack.dsn, customer_id)
    with new_database(postgres) as scratch:
        project_in_batches(scratch, [events], RAISED)  # all six events in one batch
        alerts = logged_alerts(scratch, customer_id, "credit.limit.exceeded")
    assert [(a["alert_id"], a["details"]["outstanding"]) for a in alerts] == [
        (alert_id("credit.limit.exceeded", customer_id, str(version)), outstanding)
        for version, outstanding in CREDIT_EPISODES.items()
    ]


# --- exactly once -----------------------------------------------------------------------------


def test_every_figure_is_exact_through_duplicate_sends_and_a_kill_9_of_the_projector(
    stack: Stack,
) -> None:
    """100 customers of each scenario, their events interleaved, 10% of them sent twice (same
    event_id, later in the stream); the projector is killed with SIGKILL as soon as it has
    committed its first batch, while the rest of the first half is still coming, and restarted
    after the second half was sent."""
    prefix = f"k{uuid.uuid4().hex[:6]}-"
    customers = {f"{prefix}{name}-{n}": name for name in SCENARIOS for n in range(100)}
    longest = max(len(s.steps) for s in SCENARIOS.values())
    planned = [  # (customer, step, event_id), round-robin over customers
        (customer_id, SCENARIOS[name].steps[i], str(uuid.uuid4()))
        for i in range(longest)
        for customer_id, name in customers.items()
        if i < len(SCENARIOS[name].steps)
    ]
    rng = random.Random(7)
    half = len(planned) // 2
    resent = rng.sample(planned[:half], len(planned) // 20) + rng.sample(
        planned, len(planned) // 20
    )
    projector = stack.services["services.projector"]

    def send(events: list[tuple[str, Step, str]]) -> None:
        for customer_id, step, event_id in events:
            step.send(stack.sdk, customer_id, event_id)
        assert stack.sdk.flush(timeout=60) == 0

    def projected() -> dict[str, int]:
        return projected_versions(stack.dsn, list(customers))

    send(planned[:half] + resent[: len(resent) // 2])
    deadline = time.monotonic() + 60
    while not projected():  # the first batch is committed: kill at once
        assert time.monotonic() < deadline, f"no progress\n{stack.log()}"
        time.sleep(0.01)
    projector.kill9()
    at_kill = sum(projected().values())
    assert at_kill < half, "the projector had the whole first half before it was killed"
    send(planned[half:] + resent[len(resent) // 2 :])
    projector.start()
    want = {c: len(SCENARIOS[name].steps) for c, name in customers.items()}
    stack.wait_projected(want, timeout=120)

    assert projected() == want
    for customer_id, name in customers.items():
        answer = stack.api.get(
            f"/customers/{customer_id}/balance", params={"as_of": AS_OF.isoformat()}
        )
        assert answer.status_code == 200, answer.text
        assert_report(answer.json(), customer_id, SCENARIOS[name], AS_OF)

    credit_alerts = logged_alerts(stack.dsn, prefix, "credit.limit.exceeded")
    by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for alert in credit_alerts:
        by_customer[alert["customer_id"]].append(alert)
    credit_customers = {c for c, name in customers.items() if name == "credit"}
    assert set(by_customer) == credit_customers  # nobody else goes above a limit
    for customer_id in credit_customers:
        episodes = {
            alert_id("credit.limit.exceeded", customer_id, str(v)): v for v in CREDIT_EPISODES
        }
        # every episode exactly once, with the figures of the event that started it
        found = sorted(
            (a["alert_id"], a["details"]["outstanding"]) for a in by_customer[customer_id]
        )
        assert found == sorted(
            (ident, CREDIT_EPISODES[version]) for ident, version in episodes.items()
        ), customer_id
