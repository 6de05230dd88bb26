"""The demo-data generator: valid, deterministic, ordered, and consistent like real history."""

from __future__ import annotations

import itertools
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from events.catalog import CATALOG
from events.codec import decode, encode
from events.envelope import validate_envelope
from infra.demo import BUNDLES, deserting_customers, generate, send_demo

END = datetime(2026, 1, 1, tzinfo=UTC)
START = datetime(2025, 1, 1, tzinfo=UTC)
CUSTOMERS = 200
SEED = 7
SOURCES = {"sales", "call-center", "accounting", "credit", "support", "marketing", "web"}
LAST_4_MONTHS = ["2025-09", "2025-10", "2025-11", "2025-12"]
SIX_MONTHS_BEFORE = ["2025-03", "2025-04", "2025-05", "2025-06", "2025-07", "2025-08"]

Event = dict[str, Any]


@pytest.fixture(scope="module")
def history() -> list[Event]:
    return list(generate(CUSTOMERS, months=12, seed=SEED, end=END))


def of_type(history: list[Event], type_: str) -> list[Event]:
    return [e for e in history if e["type"] == type_]


def at(event: Event) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


def skus(purchase: Event) -> set[str]:
    return {item["sku"] for item in purchase["payload"]["items"]}


def monthly_net_spend(history: list[Event]) -> dict[str, Counter[str]]:
    """Purchases minus refunds, per customer and month ("2025-03") of occurrence."""
    spend: dict[str, Counter[str]] = defaultdict(Counter)
    for e in history:
        month = at(e).strftime("%Y-%m")
        if e["type"] == "purchase.made":
            spend[e["customer_id"]][month] += Decimal(e["payload"]["total"])
        elif e["type"] == "purchase.refunded":
            spend[e["customer_id"]][month] -= Decimal(e["payload"]["amount"])
    return spend


def average(spend: Mapping[str, Decimal], months: list[str]) -> Decimal:
    return sum((spend.get(m, Decimal(0)) for m in months), Decimal(0)) / len(months)


# --- the wire contract and the shape of the history ----------------------------------------


def test_every_generated_event_passes_the_wire_contract(history: list[Event]) -> None:
    for event in history:
        assert decode(encode(validate_envelope(event))).event_id == event["event_id"]

    assert {e["type"] for e in history} == set(CATALOG.types)
    assert {e["source"] for e in history} == SOURCES
    assert all(re.fullmatch(r"[CW]-\d{6}", e["customer_id"]) for e in history)
    assert len({e["event_id"] for e in history}) == len(history)


def test_a_customer_has_60_to_120_events_a_year_on_average(history: list[Event]) -> None:
    per_customer = len(history) / CUSTOMERS
    print(f"{len(history)} events for {CUSTOMERS} customers: {per_customer:.1f} each")

    assert 60 <= per_customer <= 120
    assert len({e["customer_id"] for e in history if e["customer_id"].startswith("C-")}) == (
        CUSTOMERS
    )


def test_the_same_arguments_give_the_same_events_and_another_seed_others() -> None:
    first = list(generate(30, months=12, seed=SEED, end=END))
    again = list(generate(30, months=12, seed=SEED, end=END))
    other = list(generate(30, months=12, seed=SEED + 1, end=END))

    assert first == again
    assert {e["event_id"] for e in first}.isdisjoint(e["event_id"] for e in other)
    assert [e["payload"] for e in first] != [e["payload"] for e in other]


def test_events_come_in_occurred_at_order_within_the_months_before_end(
    history: list[Event],
) -> None:
    times = [at(e) for e in history]

    assert times == sorted(times)
    assert times[0] >= START
    assert times[-1] <= END


def test_some_customers_were_known_before_the_period_and_others_join_during_it(
    history: list[Event],
) -> None:
    registered = [at(e) for e in of_type(history, "customer.registered")]

    assert 0.3 < sum(t == START for t in registered) / len(registered) < 0.7
    assert max(registered) > datetime(2025, 10, 1, tzinfo=UTC)


def test_a_naive_end_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        generate(1, end=datetime(2026, 1, 1))


# --- money ---------------------------------------------------------------------------------


def test_every_purchase_total_is_the_sum_of_its_items(history: list[Event]) -> None:
    for purchase in of_type(history, "purchase.made"):
        payload = purchase["payload"]
        lines = [item["quantity"] * Decimal(item["unit_price"]) for item in payload["items"]]

        assert Decimal(payload["total"]) == sum(lines)
        assert re.fullmatch(r"\d+\.\d\d", payload["total"])


def test_refunds_come_after_their_order_and_never_exceed_it(history: list[Event]) -> None:
    orders: dict[str, Event] = {}
    refunded: Counter[str] = Counter()
    for event in history:
        payload = event["payload"]
        if event["type"] == "purchase.made":
            orders[payload["order_id"]] = event
        elif event["type"] == "purchase.refunded":
            order = orders[payload["order_id"]]
            refunded[payload["order_id"]] += Decimal(payload["amount"])

            assert order["customer_id"] == event["customer_id"]
            assert payload["currency"] == order["payload"]["currency"]
            assert refunded[payload["order_id"]] <= Decimal(order["payload"]["total"])
    assert refunded


def test_payments_pay_invoices_issued_before_them_and_never_more(history: list[Event]) -> None:
    invoices: dict[str, Decimal] = {}
    paid: Counter[str] = Counter()
    for event in history:
        payload = event["payload"]
        if event["type"] == "invoice.issued":
            invoices[payload["invoice_id"]] = Decimal(payload["amount"])
        elif event["type"] == "payment.received":
            paid[payload["invoice_id"]] += Decimal(payload["amount"])

            assert paid[payload["invoice_id"]] <= invoices[payload["invoice_id"]]
    assert paid


def test_most_invoices_are_paid_in_full_some_partly_and_some_not_at_all(
    history: list[Event],
) -> None:
    due_long_ago = {
        e["payload"]["invoice_id"]: Decimal(e["payload"]["amount"])
        for e in of_type(history, "invoice.issued")
        if date.fromisoformat(e["payload"]["due_date"]) < date(2025, 10, 1)
    }
    paid: Counter[str] = Counter()
    for payment in of_type(history, "payment.received"):
        paid[payment["payload"]["invoice_id"]] += Decimal(payment["payload"]["amount"])
    in_full = sum(paid[i] == amount for i, amount in due_long_ago.items()) / len(due_long_ago)
    partly = sum(0 < paid[i] < amount for i, amount in due_long_ago.items())
    unpaid = sum(paid[i] == 0 for i in due_long_ago)

    assert 0.85 < in_full < 0.99
    assert partly > 0 and unpaid > 0


def test_invoices_fall_due_by_the_payment_terms_after_their_purchase(
    history: list[Event],
) -> None:
    terms: dict[str, int] = {}
    purchased: dict[tuple[str, str], date] = {}  # (customer, total) -> date of the last purchase
    checked = 0
    for event in history:
        customer, payload = event["customer_id"], event["payload"]
        if event["type"] == "credit.terms.set":
            terms[customer] = payload["payment_terms_days"]
        elif event["type"] == "purchase.made":
            purchased[customer, payload["total"]] = at(event).date()
        elif event["type"] == "invoice.issued":
            due = date.fromisoformat(payload["due_date"])
            bought = purchased[customer, payload["amount"]]
            if customer in terms:
                checked += 1
                assert (due - bought).days == terms[customer]
            else:
                assert due > bought
    assert checked > 0


def test_business_customers_get_credit_terms_before_their_first_purchase(
    history: list[Event],
) -> None:
    first: dict[tuple[str, str], datetime] = {}
    for event in history:
        first.setdefault((event["customer_id"], event["type"]), at(event))
    with_terms = {c for c, type_ in first if type_ == "credit.terms.set"}

    assert 0 < len(with_terms) < CUSTOMERS / 2
    for customer in with_terms:
        bought = first.get((customer, "purchase.made"), END)
        assert first[customer, "credit.terms.set"] <= bought


# --- service -------------------------------------------------------------------------------


def test_complaints_follow_their_lifecycle(history: list[Event]) -> None:
    """Filed first; assigned while open; resolved while open; reopened while resolved."""
    filed: dict[str, datetime] = {}
    status: dict[str, str] = {}
    seen: set[str] = set()
    for event in history:
        complaint_id, kind = event["payload"].get("complaint_id"), event["type"]
        if kind == "complaint.filed":
            assert complaint_id not in filed
            filed[complaint_id], status[complaint_id] = at(event), "open"
        elif kind.startswith("complaint."):
            assert at(event) > filed[complaint_id]
            before = status[complaint_id]
            expected = "resolved" if kind == "complaint.reopened" else "open"
            assert before == expected, f"{kind} of {complaint_id} while {before}"
            seen.add(kind)
            if kind != "complaint.assigned":
                status[complaint_id] = "open" if kind == "complaint.reopened" else "resolved"
    satisfied = [e["payload"]["satisfied"] for e in of_type(history, "complaint.resolved")]

    assert 0 < sum(s == "resolved" for s in status.values()) < len(filed)  # some are left open
    assert seen == {"complaint.assigned", "complaint.resolved", "complaint.reopened"}
    assert True in satisfied and False in satisfied


def test_followups_are_completed_at_most_once_after_being_scheduled(
    history: list[Event],
) -> None:
    scheduled: dict[str, datetime] = {}
    completed: set[str] = set()
    for event in history:
        followup_id = event["payload"].get("followup_id")
        if event["type"] == "followup.scheduled":
            scheduled[followup_id] = at(event)
        elif event["type"] == "followup.completed":
            assert at(event) > scheduled[followup_id]
            assert followup_id not in completed
            completed.add(followup_id)
    assert 0 < len(completed) < len(scheduled)


def test_most_customers_pay_in_euros_some_in_dollars_or_pounds(history: list[Event]) -> None:
    currencies = Counter(e["payload"]["currency"] for e in of_type(history, "purchase.made"))

    assert set(currencies) == {"EUR", "USD", "GBP"}
    assert currencies["EUR"] / currencies.total() > 0.6


# --- behaviour that the views and alerts should find ---------------------------------------


def test_about_a_tenth_of_the_customers_are_deserting(history: list[Event]) -> None:
    deserting = deserting_customers(CUSTOMERS, SEED)

    assert 70 <= len(deserting_customers(1000, SEED)) <= 130
    assert deserting <= {e["customer_id"] for e in history}
    assert deserting_customers(CUSTOMERS, SEED) == deserting


def test_deserting_customers_spend_at_most_60_percent_of_their_usual_in_the_last_4_months(
    history: list[Event],
) -> None:
    spend = monthly_net_spend(history)
    deserting = deserting_customers(CUSTOMERS, SEED)

    assert deserting
    for customer in deserting:
        usual = average(spend[customer], SIX_MONTHS_BEFORE)
        assert usual > 0
        assert average(spend[customer], LAST_4_MONTHS) <= Decimal("0.6") * usual, customer


def test_most_steady_customers_that_are_not_deserting_keep_spending(
    history: list[Event],
) -> None:
    spend = monthly_net_spend(history)
    deserting = deserting_customers(CUSTOMERS, SEED)
    ordered: dict[str, set[str]] = defaultdict(set)
    for purchase in of_type(history, "purchase.made"):
        ordered[purchase["customer_id"]].add(at(purchase).strftime("%Y-%m"))
    steady = [
        customer
        for customer, months in ordered.items()
        if customer not in deserting and len(months & set(SIX_MONTHS_BEFORE)) >= 5
    ]
    falling = [
        customer
        for customer in steady
        if average(spend[customer], LAST_4_MONTHS)
        <= Decimal("0.6") * average(spend[customer], SIX_MONTHS_BEFORE)
    ]

    assert len(steady) > CUSTOMERS / 5
    assert len(falling) < len(steady) / 2


def test_a_laptop_is_bought_with_a_laptop_bag_far_more_often_than_anything_else_is(
    history: list[Event],
) -> None:
    laptop = BUNDLES[0]
    purchases = of_type(history, "purchase.made")
    with_laptop = [p for p in purchases if skus(p) & set(laptop.anchors)]
    bag = laptop.extras[0][0]

    with_bag_given_laptop = sum(bag in skus(p) for p in with_laptop) / len(with_laptop)
    with_bag = sum(bag in skus(p) for p in purchases) / len(purchases)

    assert len(with_laptop) >= 20
    assert with_bag_given_laptop > 0.5
    assert with_bag_given_laptop > 5 * with_bag


def test_coffee_beans_are_bought_again_at_a_personal_interval_of_about_a_month(
    history: list[Event],
) -> None:
    bought: dict[str, list[datetime]] = defaultdict(list)
    for purchase in of_type(history, "purchase.made"):
        if skus(purchase) == {"COF-BEAN"}:
            bought[purchase["customer_id"]].append(at(purchase))
    gaps = [
        statistics.median((b - a).days for a, b in itertools.pairwise(times))
        for times in bought.values()
        if len(times) >= 4
    ]

    assert len(gaps) >= 5
    assert 20 <= statistics.median(gaps) <= 45


# --- sending -------------------------------------------------------------------------------


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[Mapping[str, Any]] = []
        self.flushes = 0

    def send_envelope(self, envelope: Mapping[str, Any]) -> str:
        self.sent.append(envelope)
        return str(envelope["event_id"])

    def flush(self, timeout: float | None = None) -> int:
        self.flushes += 1
        return 0


def test_send_demo_sends_every_event_in_order_then_flushes() -> None:
    events = list(generate(5, months=2, seed=SEED, end=END))
    producer = FakeProducer()

    sent = send_demo(producer, iter(events), total=len(events), progress=False)

    assert sent == len(events)
    assert producer.sent == events
    assert producer.flushes == 1


def test_duplicate_accounts_share_the_identifiers_and_are_merged_into_their_customer(
    history: list[Event],
) -> None:
    merges = of_type(history, "customer.merged")
    registered = {e["customer_id"]: e["payload"] for e in of_type(history, "customer.registered")}
    assert merges, "the demo merges some duplicate accounts"
    for merge in merges:
        duplicate, survivor = merge["customer_id"], merge["payload"]["into_customer_id"]
        assert duplicate == "W-" + survivor.removeprefix("C-")
        theirs, ours = registered[duplicate], registered[survivor]
        assert theirs["email"].lower() == ours["email"].lower()
        if "phone" in ours:
            assert re.sub(r"[^\d+]", "", ours["phone"]) == theirs["phone"]
        stream = [e for e in history if e["customer_id"] == duplicate]
        assert stream[0]["type"] == "customer.registered"
        assert at(stream[0]) > at(next(e for e in history if e["customer_id"] == survivor))
    merged = {m["customer_id"] for m in merges}
    assert {e["customer_id"] for e in history if e["customer_id"].startswith("W-")} >= merged
