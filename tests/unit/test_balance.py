"""The balance fold: one example per rule (figures worked out by hand), aging on its boundary
days, then properties over generated money histories (totals from the payloads, the
outstanding identity, batching with a JSON round trip between batches, redelivery)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.alerts import alert_id
from projections.balance import (
    BALANCE,
    Balance,
    CreditTerms,
    apply,
    credit_exceeded,
    ended_between,
    fold,
    from_json,
    overdue_invoices,
    report,
    summary,
    to_json,
)
from projections.recorded import RecordedEvent, VersionGap, from_wire
from tests.unit.examples import CUSTOMER_ID, envelope

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
AS_OF = date(2026, 3, 1)

Step = tuple[str, dict[str, Any] | None]


def recorded(version: int, type_: str, payload: dict[str, Any] | None = None) -> RecordedEvent:
    data = envelope(
        type_,
        payload,
        event_id=str(uuid.uuid4()),
        occurred_at=(T0 + timedelta(minutes=version)).isoformat(),
    )
    return from_wire(data | {"position": 100 + version, "version": version})


def history(*steps: Step) -> list[RecordedEvent]:
    """Recorded events numbered 1, 2, 3... from (type, payload) pairs."""
    return [recorded(v, type_, payload) for v, (type_, payload) in enumerate(steps, start=1)]


def balance_of(*steps: Step) -> Balance:
    state = fold(history(*steps))
    assert state is not None
    return state


def invoice(invoice_id: str, amount: str, due: str = "2026-02-01", currency: str = "EUR") -> Step:
    payload = {"invoice_id": invoice_id, "amount": amount, "currency": currency, "due_date": due}
    return "invoice.issued", payload


def payment(
    payment_id: str, amount: str, invoice_id: str | None = None, currency: str = "EUR"
) -> Step:
    payload = {"payment_id": payment_id, "amount": amount, "currency": currency}
    return "payment.received", payload | ({} if invoice_id is None else {"invoice_id": invoice_id})


def purchase(order_id: str, total: str, currency: str = "EUR") -> Step:
    item = {"sku": "SKU-1", "quantity": 1, "unit_price": total}
    payload = {"order_id": order_id, "items": [item], "total": total, "currency": currency}
    return "purchase.made", payload


def refund(order_id: str, amount: str, currency: str = "EUR") -> Step:
    return "purchase.refunded", {"order_id": order_id, "amount": amount, "currency": currency}


def terms(limit: str, currency: str = "EUR", days: int = 30) -> Step:
    payload = {"credit_limit": limit, "currency": currency, "payment_terms_days": days}
    return "credit.terms.set", payload


def totals(state: Balance, currency: str = "EUR") -> dict[str, str]:
    doc = report(state, AS_OF)["balances"][currency]
    return {k: doc[k] for k in ("invoiced", "paid", "refunded", "outstanding")}


def open_outstanding(state: Balance) -> dict[str, str]:
    return {i["invoice_id"]: i["outstanding"] for i in report(state, AS_OF)["open_invoices"]}


# --- payments -----------------------------------------------------------------------------


def test_a_partial_payment_leaves_the_rest_of_its_invoice_open() -> None:
    state = balance_of(invoice("INV-1", "100.00"), payment("P-1", "40.00", "INV-1"))

    assert totals(state) == {
        "invoiced": "100.00",
        "paid": "40.00",
        "refunded": "0",
        "outstanding": "60.00",
    }
    [line] = report(state, AS_OF)["open_invoices"]
    assert (line["amount"], line["paid"], line["outstanding"]) == ("100.00", "40.00", "60.00")


def test_a_payment_for_one_invoice_settles_it_even_if_older_ones_are_open() -> None:
    state = balance_of(
        invoice("INV-1", "100", "2026-01-10"),
        invoice("INV-2", "50", "2026-02-10"),
        payment("P-1", "50", "INV-2"),
    )

    assert open_outstanding(state) == {"INV-1": "100"}


def test_a_payment_on_account_settles_the_oldest_due_invoices_first() -> None:
    state = balance_of(
        invoice("INV-1", "100.00", "2026-03-01"),
        invoice("INV-2", "30.00", "2026-01-15"),
        invoice("INV-3", "50.00", "2026-02-01"),
        invoice("INV-4", "20.00", "2026-02-01"),  # same due day as INV-3, issued after it
        payment("P-1", "90.00"),  # 30 for INV-2, 50 for INV-3, 10 for INV-4
    )

    assert open_outstanding(state) == {"INV-4": "10.00", "INV-1": "100.00"}
    assert totals(state)["outstanding"] == "110.00"


def test_the_excess_of_a_payment_for_one_invoice_settles_the_oldest_others() -> None:
    state = balance_of(
        invoice("INV-1", "100", "2026-02-01"),
        invoice("INV-2", "40", "2026-01-01"),
        invoice("INV-3", "60", "2026-03-01"),
        payment("P-1", "150", "INV-3"),  # 60 for INV-3, the 90 left: 40 for INV-2, 50 for INV-1
    )

    assert open_outstanding(state) == {"INV-1": "50"}


def test_an_overpayment_leaves_a_credit_shown_as_negative_outstanding() -> None:
    state = balance_of(invoice("INV-1", "80.00"), payment("P-1", "100.00", "INV-1"))

    assert totals(state)["outstanding"] == "-20.00"
    assert report(state, AS_OF)["open_invoices"] == []
    assert state.ledger("EUR").credit == Decimal("20.00")


def test_credit_on_account_settles_invoices_issued_later_oldest_first() -> None:
    state = balance_of(
        payment("P-1", "100"),
        invoice("INV-1", "70", "2026-02-01"),
        invoice("INV-2", "50", "2026-01-01"),  # older due date, but the credit was spent already
    )

    assert open_outstanding(state) == {"INV-2": "20"}
    assert totals(state)["outstanding"] == "20"


# --- out of order ---------------------------------------------------------------------------


def test_a_payment_before_its_invoice_counts_at_once_and_is_held_for_that_invoice() -> None:
    early = balance_of(invoice("INV-1", "100", "2026-01-01"), payment("P-1", "30", "INV-2"))

    assert totals(early)["paid"] == "30"
    assert totals(early)["outstanding"] == "70"
    assert open_outstanding(early) == {"INV-1": "100"}  # not spent on the open invoice

    state = fold([recorded(3, *invoice("INV-2", "50", "2026-02-01"))], early)
    assert state is not None

    assert open_outstanding(state) == {"INV-1": "100", "INV-2": "20"}
    assert totals(state)["outstanding"] == "120"


def test_a_held_payment_above_its_invoice_settles_the_oldest_other_invoices() -> None:
    state = balance_of(
        payment("P-1", "80", "INV-2"),
        invoice("INV-1", "100", "2026-01-01"),
        invoice("INV-2", "50", "2026-02-01"),  # 50 of P-1 for INV-2, the 30 left for INV-1
    )

    assert open_outstanding(state) == {"INV-1": "70"}


def test_a_payment_held_for_an_invoice_in_another_currency_becomes_credit() -> None:
    state = balance_of(payment("P-1", "30", "INV-1", "USD"), invoice("INV-1", "50"))

    assert open_outstanding(state) == {"INV-1": "50"}
    assert totals(state, "USD")["outstanding"] == "-30"
    assert state.ledger("USD").credit == Decimal(30)


# --- refunds ------------------------------------------------------------------------------


def test_a_refund_of_a_known_order_credits_the_customer() -> None:
    state = balance_of(
        purchase("O-1", "120.00"),
        invoice("INV-1", "120.00"),
        payment("P-1", "100.00", "INV-1"),
        refund("O-1", "25.00"),  # 20 closes INV-1, 5 left on account
    )

    assert totals(state) == {
        "invoiced": "120.00",
        "paid": "100.00",
        "refunded": "25.00",
        "outstanding": "-5.00",
    }
    assert report(state, AS_OF)["open_invoices"] == []


def test_a_refund_before_its_order_is_held_until_the_order_arrives() -> None:
    held = balance_of(invoice("INV-1", "50"), refund("O-1", "10"))

    assert totals(held)["refunded"] == "0"
    assert totals(held)["outstanding"] == "50"

    state = fold([recorded(3, *purchase("O-1", "10"))], held)
    assert state is not None

    assert totals(state)["refunded"] == "10"
    assert open_outstanding(state) == {"INV-1": "40"}


def test_a_refund_in_another_currency_than_its_order_is_not_credited() -> None:
    state = balance_of(purchase("O-1", "10", "EUR"), refund("O-1", "10", "USD"))

    assert totals(state, "USD")["refunded"] == "0"
    assert totals(state, "EUR")["refunded"] == "0"


# --- currencies, duplicates, credit terms ---------------------------------------------------


def test_balances_are_kept_per_currency() -> None:
    state = balance_of(
        invoice("INV-1", "100", currency="EUR"),
        invoice("INV-2", "70", currency="USD"),
        payment("P-1", "100", currency="USD"),  # pays INV-2, 30 USD credit; EUR untouched
        purchase("O-1", "5", "GBP"),
    )

    assert totals(state, "EUR")["outstanding"] == "100"
    assert totals(state, "USD")["outstanding"] == "-30"
    assert totals(state, "GBP") == {
        "invoiced": "0",
        "paid": "0",
        "refunded": "0",
        "outstanding": "0",
    }
    assert [(i["invoice_id"], i["currency"]) for i in report(state, AS_OF)["open_invoices"]] == [
        ("INV-1", "EUR")
    ]


def test_an_invoice_id_or_payment_id_seen_before_is_ignored() -> None:
    state = balance_of(
        invoice("INV-1", "100"),
        invoice("INV-1", "999"),
        payment("P-1", "40"),
        payment("P-1", "40"),
        payment("P-2", "60", "INV-1"),
        invoice("INV-1", "5"),  # settled by now, still known
    )

    assert totals(state) == {"invoiced": "100", "paid": "100", "refunded": "0", "outstanding": "0"}


def test_a_customer_without_money_events_has_no_balances_and_null_credit() -> None:
    doc = report(balance_of(("web.visited", None)), AS_OF)

    assert doc == {
        "customer_id": CUSTOMER_ID,
        "balances": {},
        "credit": {"limit": None, "currency": None, "available": None, "payment_terms_days": None},
        "open_invoices": [],
        "as_of": "2026-03-01",
    }


def test_credit_terms_alone_give_zeros_in_their_currency_and_the_full_limit() -> None:
    doc = report(balance_of(terms("5000", "EUR", 30)), AS_OF)

    assert doc["balances"]["EUR"]["outstanding"] == "0"
    assert doc["balances"]["EUR"]["aging"] == dict.fromkeys(
        ("current", "1-30", "31-60", "61-90", "90+"), "0"
    )
    assert doc["credit"] == {
        "limit": "5000",
        "currency": "EUR",
        "available": "5000",
        "payment_terms_days": 30,
    }


def test_the_last_credit_terms_win_and_available_is_in_their_currency() -> None:
    state = balance_of(
        terms("5000", "EUR", 30),
        invoice("INV-1", "300", currency="USD"),
        invoice("INV-2", "100", currency="EUR"),
        terms("1000", "USD", 14),
    )

    assert state.terms == CreditTerms(Decimal(1000), "USD", 14)
    assert report(state, AS_OF)["credit"]["available"] == "700"


def test_the_credit_limit_is_exceeded_only_above_it_in_its_currency() -> None:
    at_limit = balance_of(
        terms("100"), invoice("INV-1", "100"), invoice("INV-2", "90", currency="USD")
    )
    above = balance_of(terms("100"), invoice("INV-1", "100.01"))

    assert not credit_exceeded(at_limit)
    assert credit_exceeded(above)
    assert report(above, AS_OF)["credit"]["available"] == "-0.01"
    assert not credit_exceeded(balance_of(invoice("INV-1", "1000000")))  # no terms, no limit


# --- aging and overdue ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "bucket"),
    [
        (-10, "current"),
        (0, "current"),
        (1, "1-30"),
        (30, "1-30"),
        (31, "31-60"),
        (60, "31-60"),
        (61, "61-90"),
        (90, "61-90"),
        (91, "90+"),
        (400, "90+"),
    ],
)
def test_aging_puts_an_invoice_in_the_bucket_of_its_days_past_due(days: int, bucket: str) -> None:
    due = AS_OF - timedelta(days=days)
    state = balance_of(invoice("INV-1", "10", due.isoformat()), payment("P-1", "2.50", "INV-1"))

    doc = report(state, AS_OF)

    assert doc["balances"]["EUR"]["aging"][bucket] == "7.50"
    assert [v for k, v in doc["balances"]["EUR"]["aging"].items() if k != bucket] == ["0"] * 4
    assert doc["balances"]["EUR"]["overdue"] == ("0" if days <= 0 else "7.50")
    assert doc["open_invoices"][0]["days_overdue"] == days


def test_overdue_adds_up_every_invoice_past_due_and_nothing_current() -> None:
    state = balance_of(
        invoice("INV-1", "10", "2026-03-01"),  # due today: current
        invoice("INV-2", "20", "2026-02-28"),  # 1 day
        invoice("INV-3", "40", "2025-10-01"),  # 151 days
    )

    doc = report(state, AS_OF)["balances"]["EUR"]

    assert (doc["overdue"], doc["aging"]["1-30"], doc["aging"]["90+"]) == ("60", "20", "40")


def test_open_invoices_are_listed_oldest_due_first() -> None:
    state = balance_of(
        invoice("INV-1", "1", "2026-05-01"),
        invoice("INV-2", "1", "2026-01-01", "USD"),
        invoice("INV-3", "1", "2026-03-01"),
        invoice("INV-4", "1", "2026-01-01"),
    )

    ids = [i["invoice_id"] for i in report(state, AS_OF)["open_invoices"]]

    assert ids == ["INV-2", "INV-4", "INV-3", "INV-1"]


def test_overdue_invoices_are_the_unpaid_ones_past_due() -> None:
    state = balance_of(
        invoice("INV-1", "10", "2026-02-01"),
        invoice("INV-2", "20", "2026-02-02"),
        invoice("INV-3", "30", "2026-03-01"),
        payment("P-1", "15"),  # closes INV-1, 5 off INV-2
    )

    assert overdue_invoices(state, AS_OF) == [("INV-2", date(2026, 2, 2), Decimal(15), "EUR")]


def test_the_summary_for_the_360_shows_outstanding_overdue_and_credit() -> None:
    state = balance_of(
        terms("500"),
        invoice("INV-1", "100.00", "2026-01-01"),
        invoice("INV-2", "50.00", "2026-04-01", "USD"),
    )

    assert summary(state, AS_OF) == {
        "outstanding": {"EUR": "100.00", "USD": "50.00"},
        "overdue": {"EUR": "100.00", "USD": "0"},
        "credit_limit": "500",
        "available_credit": "400.00",
        "currency": "EUR",
    }


# --- versions and JSON ----------------------------------------------------------------------


def test_an_event_at_or_below_the_state_version_changes_nothing() -> None:
    events = history(invoice("INV-1", "10"), payment("P-1", "5"))
    state = fold(events)
    assert state is not None

    assert apply(state, events[0]) is state
    assert apply(state, events[1]) is state


def test_a_version_gap_is_the_shared_version_gap() -> None:
    state = balance_of(invoice("INV-1", "10"))

    with pytest.raises(VersionGap) as caught:
        apply(state, recorded(3, *payment("P-1", "5")))

    assert (caught.value.expected, caught.value.got) == (2, 3)


def test_an_event_of_another_customer_is_refused() -> None:
    state = balance_of(invoice("INV-1", "10"))
    other = from_wire(envelope("web.visited", customer_id="C-9") | {"position": 200, "version": 2})

    with pytest.raises(ValueError, match="C-9"):
        apply(state, other)


def test_the_json_document_round_trips_with_held_money_and_terms() -> None:
    state = balance_of(
        terms("5000.00", "EUR", 45),
        invoice("INV-1", "129.9000", "2026-01-31"),
        payment("P-1", "10", "INV-9", "USD"),
        refund("O-7", "3.5"),
        payment("P-2", "29.90", "INV-1"),
        invoice("INV-2", "1", "2026-01-01"),
        payment("P-3", "1"),  # on account: INV-2 is due first
    )

    doc = orjson.loads(orjson.dumps(to_json(state)))

    assert doc["ledgers"]["USD"]["held_payments"] == {"INV-9": "10"}
    assert doc["ledgers"]["EUR"]["held_refunds"] == {"O-7": "3.5"}
    assert doc["ledgers"]["EUR"]["open_invoices"][0]["amount"] == "129.9000"
    assert doc["settled_invoice_ids"] == ["INV-2"]
    assert from_json(doc) == state
    assert to_json(from_json(doc)) == to_json(state)


def test_the_projector_read_model_uses_this_fold_and_its_json() -> None:
    assert (BALANCE.name, BALANCE.table) == ("balance", "rm_balance")
    assert (BALANCE.apply, BALANCE.to_json, BALANCE.from_json) == (apply, to_json, from_json)


# --- properties over generated money histories ----------------------------------------------

CURRENCIES = ("EUR", "USD")
amounts = st.one_of(
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal(5000), places=places)
    for places in (0, 2)
).map(lambda amount: f"{amount:f}")
currencies = st.sampled_from(CURRENCIES)
due_dates = st.dates(date(2025, 10, 1), date(2026, 5, 1)).map(date.isoformat)
invoice_ids = st.sampled_from(["INV-1", "INV-2", "INV-3", "INV-4", "INV-5"])
order_ids = st.sampled_from(["O-1", "O-2", "O-3"])

MONEY_STEPS: st.SearchStrategy[Step] = st.one_of(
    st.builds(invoice, invoice_ids, amounts, due_dates, currencies),
    st.builds(
        payment,
        st.sampled_from([f"P-{n}" for n in range(1, 9)]),
        amounts,
        st.none() | invoice_ids,
        currencies,
    ),
    st.builds(purchase, order_ids, amounts, currencies),
    st.builds(refund, order_ids, amounts, currencies),
    st.builds(terms, amounts, currencies, st.integers(0, 90)),
    st.just(("web.visited", None)),
)


@st.composite
def money_histories(draw: st.DrawFn) -> list[RecordedEvent]:
    return history(*draw(st.lists(MONEY_STEPS, min_size=1, max_size=40)))


def expected_totals(events: list[RecordedEvent]) -> dict[str, dict[str, Decimal]]:
    """invoiced, paid, refunded and held payments per currency, straight from the payloads.

    A repeated invoice_id or payment_id leaves no trace, not even its currency."""
    kinds = ("invoiced", "paid", "refunded", "held")
    sums: dict[str, dict[str, Decimal]] = {}
    payloads = [(e.envelope.type, e.envelope.payload) for e in events]
    issued = {p["invoice_id"] for t, p in payloads if t == "invoice.issued"}
    ordered = {(p["order_id"], p["currency"]) for t, p in payloads if t == "purchase.made"}
    seen: set[tuple[str, str]] = set()
    for type_, p in payloads:
        if "currency" not in p:
            continue
        ident = {"invoice.issued": "invoice_id", "payment.received": "payment_id"}.get(type_)
        if ident is not None:
            if (type_, p[ident]) in seen:
                continue
            seen.add((type_, p[ident]))
        figures = sums.setdefault(p["currency"], dict.fromkeys(kinds, Decimal(0)))
        if type_ == "invoice.issued":
            figures["invoiced"] += Decimal(p["amount"])
        elif type_ == "payment.received":
            figures["paid"] += Decimal(p["amount"])
            if p.get("invoice_id") not in {None, *issued}:
                figures["held"] += Decimal(p["amount"])
        elif type_ == "purchase.refunded" and (p["order_id"], p["currency"]) in ordered:
            figures["refunded"] += Decimal(p["amount"])
    return sums


def stored(state: Balance) -> Balance:
    """The state after a trip through the read model's JSONB column."""
    return from_json(orjson.loads(orjson.dumps(to_json(state))))


@given(money_histories())
def test_totals_match_the_payloads_and_outstanding_is_open_invoices_less_credit(
    events: list[RecordedEvent],
) -> None:
    expected = expected_totals(events)
    state = fold(events)
    assert state is not None

    doc = report(state, AS_OF)

    assert set(doc["balances"]) == set(expected)
    for currency, figures in expected.items():
        balance = doc["balances"][currency]
        outstanding = figures["invoiced"] - figures["paid"] - figures["refunded"]
        assert {k: Decimal(balance[k]) for k in ("invoiced", "paid", "refunded")} == {
            k: figures[k] for k in ("invoiced", "paid", "refunded")
        }
        assert Decimal(balance["outstanding"]) == outstanding
        lines = [i for i in doc["open_invoices"] if i["currency"] == currency]
        owed = sum((Decimal(i["outstanding"]) for i in lines), Decimal(0))
        credit = state.ledger(currency).credit
        assert owed - credit - figures["held"] == outstanding
        assert credit >= 0
        assert not (credit > 0 and lines)  # credit is spent while an invoice is open
        assert sum((Decimal(a) for a in balance["aging"].values()), Decimal(0)) == owed
        overdue = [Decimal(i["outstanding"]) for i in lines if i["days_overdue"] >= 1]
        assert Decimal(balance["overdue"]) == sum(overdue, Decimal(0))
    for line in doc["open_invoices"]:
        assert 0 < Decimal(line["outstanding"]) <= Decimal(line["amount"])
    assert [i["due_date"] for i in doc["open_invoices"]] == sorted(
        i["due_date"] for i in doc["open_invoices"]
    )


@given(money_histories(), st.data())
def test_folding_in_batches_stored_between_them_equals_folding_at_once(
    events: list[RecordedEvent], data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    state = None
    for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
        state = fold(events[start:end], state)
        state = None if state is None else stored(state)

    assert state == fold(events)
    assert state is not None and to_json(state) == to_json(stored(state))


@given(money_histories(), st.data())
def test_redelivering_an_applied_event_changes_nothing(
    events: list[RecordedEvent], data: st.DataObject
) -> None:
    applied = data.draw(st.integers(1, len(events)))
    again = events[data.draw(st.integers(0, applied - 1))]
    state = fold(events[:applied])
    assert state is not None

    assert apply(state, again) == state
    assert fold(events[applied:], apply(stored(state), again)) == fold(events)


# --- episodes that end ------------------------------------------------------------------------


def ended_by_each_event(*steps: Step) -> list[list[str]]:
    """The alert ids each event of the history ends, event by event."""
    state, ended = None, []
    for event in history(*steps):
        before, state = state, apply(state, event)
        ended.append(ended_between(before, state))
    return ended


def test_settling_an_invoice_ends_its_overdue_episode_a_partial_payment_does_not() -> None:
    ended = ended_by_each_event(
        invoice("I-1", "100.00"), invoice("I-2", "50.00"),
        payment("P-1", "40.00", "I-1"), payment("P-2", "90.00"),  # 60 to I-1, 30 to I-2
        payment("P-3", "20.00", "I-2"),
    )  # fmt: skip

    assert ended == [
        [], [], [],
        [alert_id("invoice.overdue", CUSTOMER_ID, "I-1")],
        [alert_id("invoice.overdue", CUSTOMER_ID, "I-2")],
    ]  # fmt: skip


def test_coming_back_within_the_limit_ends_the_credit_episode_that_began_at_its_version() -> None:
    ended = ended_by_each_event(
        terms("100.00"), invoice("I-1", "150.00"), payment("P-1", "30.00"),  # still above
        payment("P-2", "30.00"),  # 90: within the limit again
        invoice("I-2", "20.00"), payment("P-3", "100.00"),  # above again (v5), back (v6)
    )  # fmt: skip

    assert ended == [
        [], [], [],
        [alert_id("credit.limit.exceeded", CUSTOMER_ID, "2")],
        [],
        [alert_id("credit.limit.exceeded", CUSTOMER_ID, "5"),
         alert_id("invoice.overdue", CUSTOMER_ID, "I-1")],  # P-3 pays I-1's 90 first
    ]  # fmt: skip
