"""The customer 360 fold: one example per rule, then properties over generated histories
(batching with a JSON round trip between batches, redelivery, independent sums), and the
crm.events wire form of recorded events."""

from __future__ import annotations

import string
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.catalog import CATALOG, Catalog, EventSchema
from events.errors import InvalidEvent
from events.fields import integer, text
from projections import customer_360
from projections.customer_360 import (
    CUSTOMER_360,
    RECENT_LIMIT,
    Customer360,
    Profile,
    apply,
    fold,
    from_json,
    to_json,
)
from projections.recorded import (
    RecordedEvent,
    VersionGap,
    decode_recorded,
    encode_recorded,
    from_wire,
    to_wire,
)
from tests.unit.examples import CUSTOMER_ID, VALID_PAYLOADS, envelope

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def recorded(
    version: int,
    type_: str,
    payload: dict[str, Any] | None = None,
    *,
    at: datetime | str | None = None,
    position: int | None = None,
    customer_id: str = CUSTOMER_ID,
) -> RecordedEvent:
    """A validated recorded event; `at` defaults to T0 plus `version` minutes."""
    moment = T0 + timedelta(minutes=version) if at is None else at
    occurred_at = moment if isinstance(moment, str) else moment.isoformat()
    data = envelope(
        type_,
        payload,
        event_id=str(uuid.uuid4()),
        occurred_at=occurred_at,
        customer_id=customer_id,
    )
    return from_wire(data | {"position": position or 100 + version, "version": version})


def history(*events: tuple[str, dict[str, Any] | None]) -> list[RecordedEvent]:
    """Recorded events numbered 1, 2, 3... from (type, payload) pairs."""
    return [recorded(v, type_, payload) for v, (type_, payload) in enumerate(events, start=1)]


def view_of(events: Sequence[RecordedEvent]) -> Customer360:
    view = fold(events)
    assert view is not None
    return view


def purchase(total: str, currency: str = "EUR", order_id: str = "O-1") -> dict[str, Any]:
    item = {"sku": "SKU-1", "quantity": 1, "unit_price": total}
    return {"order_id": order_id, "items": [item], "total": total, "currency": currency}


def refund(amount: str, currency: str = "EUR", order_id: str = "O-1") -> dict[str, Any]:
    return {"order_id": order_id, "amount": amount, "currency": currency}


def filed(complaint_id: str) -> dict[str, Any]:
    return VALID_PAYLOADS["complaint.filed"] | {"complaint_id": complaint_id}


def resolved(complaint_id: str) -> dict[str, Any]:
    return {"complaint_id": complaint_id, "resolution": "Fixed."}


# --- counting and times ------------------------------------------------------------------


def test_every_event_counts_as_a_touchpoint_by_type() -> None:
    view = view_of(history(("web.visited", None), ("call.logged", None), ("web.visited", None)))

    doc = to_json(view)["touchpoints"]

    assert doc["total"] == 3
    assert doc["by_type"] == {"call.logged": 1, "web.visited": 2}


def test_first_and_last_at_follow_occurred_at_not_arrival_order() -> None:
    events = [
        recorded(1, "web.visited", at="2026-03-01T12:00:00+02:00"),
        recorded(2, "web.visited", at="2026-01-01T00:00:00Z"),
        recorded(3, "web.visited", at="2026-06-30T23:30:00-05:00"),
        recorded(4, "web.visited", at="2026-02-01T00:00:00Z"),
    ]

    doc = to_json(view_of(events))["touchpoints"]

    assert (doc["first_at"], doc["last_at"]) == ("2026-01-01T00:00:00Z", "2026-07-01T04:30:00Z")


def test_the_view_records_the_version_and_position_of_the_last_applied_event() -> None:
    events = [recorded(1, "web.visited", position=7), recorded(2, "web.visited", position=19)]

    doc = to_json(view_of(events))

    assert (doc["customer_id"], doc["version"], doc["position"]) == (CUSTOMER_ID, 2, 19)


# --- profile ------------------------------------------------------------------------------


def test_registration_sets_the_profile() -> None:
    view = view_of(history(("customer.registered", None)))

    assert to_json(view)["profile"] == VALID_PAYLOADS["customer.registered"]


def test_an_update_overrides_only_the_fields_it_carries() -> None:
    registered = {"name": "Ada", "email": "ada@example.com", "phone": "+44 1"}
    view = view_of(
        history(
            ("customer.registered", registered),
            ("customer.updated", {"phone": "+44 2", "address": "London"}),
            ("customer.updated", {"email": None, "name": "Ada King"}),
        )
    )

    assert view.profile == Profile("Ada King", "ada@example.com", "+44 2", "London")


def test_events_before_registration_leave_the_profile_empty() -> None:
    doc = to_json(view_of(history(("web.visited", None))))

    assert doc["profile"] == {"name": None, "email": None, "phone": None, "address": None}


# --- purchases ----------------------------------------------------------------------------


def test_a_refund_reduces_the_spend_in_its_currency() -> None:
    view = view_of(
        history(
            ("purchase.made", purchase("129.90")),
            ("purchase.refunded", refund("14.95")),
        )
    )

    assert to_json(view)["purchases"] == {
        "count": 1,
        "total_spent": {"EUR": "114.95"},
        "last_purchase_at": "2026-01-05T10:01:00Z",
        "by_month": {"EUR": {"2026-01": "114.95"}},
    }


def test_spend_is_kept_per_currency() -> None:
    view = view_of(
        history(
            ("purchase.made", purchase("100.00", "EUR")),
            ("purchase.made", purchase("50", "USD")),
            ("purchase.made", purchase("0.5", "EUR")),
            ("purchase.refunded", refund("20.25", "USD")),
        )
    )

    assert to_json(view)["purchases"]["total_spent"] == {"EUR": "100.50", "USD": "29.75"}
    assert view.total_spent == {"EUR": Decimal("100.50"), "USD": Decimal("29.75")}


def test_net_spend_is_kept_by_utc_month_of_occurrence_and_currency() -> None:
    events = [
        recorded(1, "purchase.made", purchase("100.00"), at="2026-01-31T23:30:00-02:00"),
        recorded(2, "purchase.made", purchase("40", "USD"), at="2026-01-10T00:00:00Z"),
        recorded(3, "purchase.made", purchase("10.50"), at="2026-02-03T00:00:00Z"),
        recorded(4, "purchase.refunded", refund("25"), at="2026-03-01T00:00:00Z"),
        recorded(5, "purchase.made", purchase("5"), at="2026-01-01T00:00:00Z"),
    ]

    view = view_of(events)

    # 23:30 at UTC-2 on 31 January is 01:30 UTC on 1 February; a refund counts in its own month.
    assert to_json(view)["purchases"]["by_month"] == {
        "EUR": {"2026-01": "5", "2026-02": "110.50", "2026-03": "-25"},
        "USD": {"2026-01": "40"},
    }
    assert from_json(to_json(view)) == view


def test_the_last_purchase_is_the_latest_by_occurred_at() -> None:
    events = [
        recorded(1, "purchase.made", purchase("1"), at="2026-05-01T00:00:00Z"),
        recorded(2, "purchase.made", purchase("1"), at="2026-04-01T00:00:00Z"),
        recorded(3, "web.visited", at="2026-09-01T00:00:00Z"),
    ]

    assert to_json(view_of(events))["purchases"]["last_purchase_at"] == "2026-05-01T00:00:00Z"


def test_a_view_without_purchases_has_no_spend() -> None:
    purchases = to_json(view_of(history(("web.visited", None))))["purchases"]

    assert purchases == {"count": 0, "total_spent": {}, "last_purchase_at": None, "by_month": {}}


# --- complaints ---------------------------------------------------------------------------


def test_a_filed_complaint_is_open_until_resolved() -> None:
    events = history(
        ("complaint.filed", filed("K-1")),
        ("complaint.filed", filed("K-2")),
        ("complaint.resolved", resolved("K-1")),
    )

    view = view_of(events)

    assert to_json(view)["complaints"] == {"open": 1, "total": 2}
    assert to_json(view)["open_complaint_ids"] == ["K-2"]


def test_a_reopened_complaint_is_open_again() -> None:
    events = history(
        ("complaint.filed", filed("K-1")),
        ("complaint.resolved", resolved("K-1")),
        ("complaint.reopened", {"complaint_id": "K-1", "reason": "still broken"}),
    )

    assert to_json(view_of(events))["complaints"] == {"open": 1, "total": 1}


def test_resolving_twice_or_resolving_an_unknown_complaint_never_goes_negative() -> None:
    events = history(
        ("complaint.resolved", resolved("K-9")),
        ("complaint.filed", filed("K-1")),
        ("complaint.resolved", resolved("K-1")),
        ("complaint.resolved", resolved("K-1")),
    )

    assert to_json(view_of(events))["complaints"] == {"open": 0, "total": 1}


# --- recent -------------------------------------------------------------------------------


def test_recent_keeps_the_newest_twenty_by_occurred_at() -> None:
    minutes = [(7 * i) % 30 for i in range(30)]  # every minute 0..29 once, shuffled
    events = [
        recorded(v, "web.visited", at=T0 + timedelta(minutes=m))
        for v, m in enumerate(minutes, start=1)
    ]

    recent = to_json(view_of(events))["recent"]

    assert len(recent) == RECENT_LIMIT
    expected = [T0 + timedelta(minutes=m) for m in range(29, 9, -1)]
    assert [item["occurred_at"] for item in recent] == [t.isoformat()[:-6] + "Z" for t in expected]


def test_recent_breaks_ties_in_occurred_at_by_the_higher_version() -> None:
    events = [recorded(v, "web.visited", at=T0) for v in (1, 2, 3)]

    recent = to_json(view_of(events))["recent"]

    assert [item["version"] for item in recent] == [3, 2, 1]
    assert recent[0]["event_id"] == events[2].envelope.event_id


@pytest.mark.parametrize(
    ("type_", "payload", "summary"),
    [
        (
            "call.logged",
            {"direction": "inbound", "duration_seconds": 340, "agent": "maria", "outcome": "ok"},
            "Inbound call, 5m 40s (agent maria): ok",
        ),
        ("call.logged", {"direction": "outbound", "duration_seconds": 7}, "Outbound call, 7s"),
        ("purchase.made", None, "Purchase O-1001: 3 items, 129.90 EUR"),
        ("purchase.refunded", None, "Refund 14.95 EUR for O-1001"),
        ("complaint.filed", None, "Complaint K-7 filed (medium, delivery)"),
        ("complaint.assigned", None, "Complaint K-7 assigned to Grace"),
        ("complaint.reopened", None, "Complaint K-7 reopened: The new box was crushed too."),
        ("invoice.issued", None, "Invoice INV-2026-001: 129.90 EUR due 2026-02-04"),
        ("payment.received", None, "Payment PAY-9: 129.90 EUR for INV-2026-001"),
        (
            "payment.received",
            {"payment_id": "P-1", "amount": "5", "currency": "USD"},
            "Payment P-1: 5 USD on account",
        ),
        ("credit.terms.set", None, "Credit limit 5000 EUR, 30 days"),
        ("web.visited", None, "Viewed https://shop.example/products/ENG-1"),
        (
            "followup.scheduled",
            {"followup_id": "F-1", "due_at": "2026-11-30T10:00:00Z", "reason": "Call back"},
            "Follow-up F-1 due 2026-11-30T10:00:00Z: Call back",
        ),
        ("followup.completed", None, "Follow-up F-3 completed: Customer is happy."),
        ("customer.updated", None, "Profile updated: email"),
    ],
)
def test_each_type_has_a_short_summary(
    type_: str, payload: dict[str, Any] | None, summary: str
) -> None:
    view = view_of([recorded(1, type_, payload)])

    assert view.recent[0].summary == summary


def test_every_catalog_type_has_a_summary() -> None:
    assert set(customer_360._SUMMARIES) == set(CATALOG.types)


def test_a_long_summary_is_cut_to_one_short_line() -> None:
    payload = {"complaint_id": "K-1", "resolution": "word\n" * 700}

    summary = view_of([recorded(1, "complaint.resolved", payload)]).recent[0].summary

    assert len(summary) == customer_360.SUMMARY_LIMIT
    assert summary.startswith("Complaint K-1 resolved: word word")
    assert summary.endswith("…")
    assert "\n" not in summary


# --- versions -----------------------------------------------------------------------------


def test_an_event_at_or_below_the_view_version_changes_nothing() -> None:
    events = history(("purchase.made", purchase("10")), ("purchase.made", purchase("20")))
    view = view_of(events)

    assert apply(view, events[1]) is view
    assert apply(view, events[0]) is view


def test_a_version_gap_names_the_expected_and_the_received_version() -> None:
    view = view_of(history(("web.visited", None)))

    with pytest.raises(VersionGap) as caught:
        apply(view, recorded(3, "web.visited"))

    assert (caught.value.customer_id, caught.value.expected, caught.value.got) == (
        CUSTOMER_ID,
        2,
        3,
    )


def test_a_first_event_above_version_one_is_a_version_gap() -> None:
    with pytest.raises(VersionGap) as caught:
        apply(None, recorded(2, "web.visited"))

    assert (caught.value.expected, caught.value.got) == (1, 2)


def test_an_event_of_another_customer_is_refused() -> None:
    view = view_of(history(("web.visited", None)))

    with pytest.raises(ValueError, match="C-9"):
        apply(view, recorded(2, "web.visited", customer_id="C-9"))


def test_folding_nothing_returns_the_view_given() -> None:
    view = view_of(history(("web.visited", None)))

    assert fold([]) is None
    assert fold([], view) is view


# --- JSON ---------------------------------------------------------------------------------


def test_the_json_document_round_trips_with_its_internal_state() -> None:
    view = view_of(
        history(
            ("customer.registered", None),
            ("purchase.made", purchase("0.1000", "JPY")),
            ("complaint.filed", filed("K-1")),
            ("complaint.filed", filed("K-2")),
        )
    )

    doc = orjson.loads(orjson.dumps(to_json(view)))

    assert doc["open_complaint_ids"] == ["K-1", "K-2"]
    assert doc["purchases"]["total_spent"] == {"JPY": "0.1000"}
    assert from_json(doc) == view


def test_the_projector_read_model_uses_this_fold_and_its_json() -> None:
    assert (CUSTOMER_360.name, CUSTOMER_360.table) == ("customer_360", "rm_customer_360")
    assert (CUSTOMER_360.apply, CUSTOMER_360.to_json, CUSTOMER_360.from_json) == (
        apply,
        to_json,
        from_json,
    )


# --- the wire form of recorded events ------------------------------------------------------


def test_a_recorded_event_round_trips_through_bytes() -> None:
    event = recorded(3, "purchase.made", at="2026-01-05T10:15:30.250+02:00", position=42)

    raw = encode_recorded(event)

    assert orjson.loads(raw)["occurred_at"] == "2026-01-05T08:15:30.250000Z"
    assert decode_recorded(raw) == event
    assert from_wire(to_wire(event)) == event


@pytest.mark.parametrize("name", ["position", "version"])
@pytest.mark.parametrize("value", [None, 0, "3", True, 1.5])
def test_a_missing_or_bad_counter_is_a_schema_violation(name: str, value: Any) -> None:
    data = to_wire(recorded(1, "web.visited")) | {name: value}

    with pytest.raises(InvalidEvent) as caught:
        from_wire(data)

    assert (caught.value.code, caught.value.field) == ("schema_violation", name)


def test_bytes_that_are_not_json_are_invalid_json() -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode_recorded(b"{not json")

    assert caught.value.code == "invalid_json"


def test_a_recorded_event_is_upcast_to_the_current_schema_version() -> None:
    v1 = EventSchema("note.taken", 1, (text("text"),), "v1")
    v2 = EventSchema(
        "note.taken", 2, (text("text"), integer("words")), "v2", upcast=lambda p: p | {"words": 1}
    )
    data = envelope("web.visited", type="note.taken", payload={"text": "hi"})

    event = from_wire(data | {"position": 1, "version": 1}, Catalog([v1, v2]))

    assert (event.envelope.schema_version, event.envelope.payload) == (
        2,
        {"text": "hi", "words": 1},
    )


# --- properties over generated histories ---------------------------------------------------

CURRENCIES = ("EUR", "USD", "JPY")
ZONES = (UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30)))

words = st.text(string.ascii_letters + string.digits + " .-", min_size=1, max_size=30).filter(
    str.strip
)
ids = st.sampled_from(["1", "2", "3"])
amounts = st.one_of(
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal(99_999), places=places)
    for places in (0, 2, 4)
)
currencies = st.sampled_from(CURRENCIES)
occurred = st.one_of(
    st.sampled_from([T0, T0 + timedelta(hours=1)]),  # ties in occurred_at
    st.datetimes(
        min_value=datetime(2024, 1, 1),
        max_value=datetime(2027, 1, 1),
        timezones=st.sampled_from(ZONES),
    ),
)


def money(amount: Decimal) -> str:
    return f"{amount:f}"


@st.composite
def purchases(draw: st.DrawFn) -> dict[str, Any]:
    item = st.fixed_dictionaries(
        {"sku": ids.map("SKU-{}".format), "quantity": st.integers(1, 5), "unit_price": amounts},
        optional={"name": words},
    )
    items = draw(st.lists(item, min_size=1, max_size=3))
    total = sum((i["quantity"] * i["unit_price"] for i in items), Decimal(0))
    return {
        "order_id": draw(ids.map("O-{}".format)),
        "items": [i | {"unit_price": money(i["unit_price"])} for i in items],
        "total": money(total),
        "currency": draw(currencies),
    }


PROFILE = {
    "email": words.map(lambda w: w.replace(" ", "x") + "@example.com"),
    "phone": words,
    "address": words,
}
PAYLOADS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "customer.registered": st.fixed_dictionaries({"name": words}, optional=PROFILE),
    "customer.updated": st.fixed_dictionaries({}, optional=PROFILE | {"name": words}),
    "call.logged": st.fixed_dictionaries(
        {
            "direction": st.sampled_from(["inbound", "outbound"]),
            "duration_seconds": st.integers(0, 9000),
        },
        optional={"agent": words, "outcome": words, "notes": words, "phone": words},
    ),
    "email.logged": st.fixed_dictionaries(
        {"direction": st.sampled_from(["inbound", "outbound"]), "subject": words}
    ),
    "purchase.made": purchases(),
    "purchase.refunded": st.fixed_dictionaries(
        {"order_id": ids.map("O-{}".format), "amount": amounts.map(money), "currency": currencies},
        optional={"reason": words},
    ),
    "complaint.filed": st.fixed_dictionaries(
        {
            "complaint_id": ids.map("K-{}".format),
            "category": words,
            "severity": st.sampled_from(["low", "medium", "high"]),
            "description": words,
        }
    ),
    "complaint.resolved": st.fixed_dictionaries(
        {"complaint_id": ids.map("K-{}".format), "resolution": words},
        optional={"satisfied": st.booleans()},
    ),
    "complaint.assigned": st.fixed_dictionaries(
        {"complaint_id": ids.map("K-{}".format), "assignee": words}
    ),
    "complaint.reopened": st.fixed_dictionaries(
        {"complaint_id": ids.map("K-{}".format), "reason": words}
    ),
    "invoice.issued": st.fixed_dictionaries(
        {
            "invoice_id": ids.map("INV-{}".format),
            "amount": amounts.map(money),
            "currency": currencies,
            "due_date": st.dates().map(str),
        }
    ),
    "payment.received": st.fixed_dictionaries(
        {
            "payment_id": ids.map("P-{}".format),
            "amount": amounts.map(money),
            "currency": currencies,
        },
        optional={"invoice_id": ids.map("INV-{}".format)},
    ),
    "credit.terms.set": st.fixed_dictionaries(
        {
            "credit_limit": amounts.map(money),
            "currency": currencies,
            "payment_terms_days": st.integers(0, 90),
        }
    ),
    "web.visited": st.fixed_dictionaries(
        {"url": words.map("https://shop.example/{}".format)},
        optional={"product_sku": words, "session_id": words},
    ),
    "followup.scheduled": st.fixed_dictionaries(
        {
            "followup_id": ids.map("F-{}".format),
            "due_at": st.datetimes(timezones=st.sampled_from(ZONES)).map(datetime.isoformat),
            "reason": words,
        },
        optional={"assignee": words},
    ),
    "followup.completed": st.fixed_dictionaries(
        {"followup_id": ids.map("F-{}".format)}, optional={"outcome": words}
    ),
    "customer.merged": st.fixed_dictionaries({"into_customer_id": ids.map("C-{}".format)}),
}


@st.composite
def histories(draw: st.DrawFn) -> list[RecordedEvent]:
    """One customer's recorded events: versions 1..n, positions growing with gaps."""
    size = draw(st.integers(1, 50))  # a drawn size: long histories fill and roll "recent"
    types = draw(st.lists(st.sampled_from(CATALOG.types), min_size=size, max_size=size))
    events, position = [], 0
    for version, type_ in enumerate(types, start=1):
        position += draw(st.integers(1, 5))
        data = envelope(
            type_,
            draw(PAYLOADS[type_]),
            event_id=str(draw(st.uuids())),
            occurred_at=draw(occurred).isoformat(),
        )
        events.append(from_wire(data | {"position": position, "version": version}))
    return events


def stored(view: Customer360) -> Customer360:
    """The view after a trip through the read model's JSONB column."""
    return from_json(orjson.loads(orjson.dumps(to_json(view))))


@given(histories(), st.data())
def test_folding_in_batches_stored_between_them_equals_folding_at_once(
    events: list[RecordedEvent], data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    view = None
    for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
        view = fold(events[start:end], view)
        view = None if view is None else stored(view)

    assert view == fold(events)


@given(histories(), st.data())
def test_redelivering_an_applied_event_changes_nothing(
    events: list[RecordedEvent], data: st.DataObject
) -> None:
    applied = data.draw(st.integers(1, len(events)))
    again = events[data.draw(st.integers(0, applied - 1))]
    view = view_of(events[:applied])

    assert apply(view, again) == view
    assert apply(stored(view), again) == view
    assert fold(events[applied:], apply(view, again)) == fold(events)


@given(histories())
def test_totals_match_what_the_payloads_add_up_to(events: list[RecordedEvent]) -> None:
    spent: dict[str, Decimal] = {}
    for event in events:
        p = event.envelope.payload
        if event.envelope.type == "purchase.made":
            spent[p["currency"]] = spent.get(p["currency"], Decimal(0)) + Decimal(p["total"])
        elif event.envelope.type == "purchase.refunded":
            spent[p["currency"]] = spent.get(p["currency"], Decimal(0)) - Decimal(p["amount"])
    types = Counter(e.envelope.type for e in events)
    times = [e.envelope.occurred_at for e in events]
    newest = sorted(events, key=lambda e: (e.envelope.occurred_at, e.version), reverse=True)

    doc = to_json(view_of(events))

    assert {c: Decimal(a) for c, a in doc["purchases"]["total_spent"].items()} == spent
    assert doc["purchases"]["count"] == types["purchase.made"]
    assert doc["touchpoints"]["total"] == len(events)
    assert doc["touchpoints"]["by_type"] == types
    first_at, last_at = (
        datetime.fromisoformat(doc["touchpoints"][k]) for k in ("first_at", "last_at")
    )
    assert (first_at, last_at) == (min(times), max(times))
    assert [r["version"] for r in doc["recent"]] == [e.version for e in newest[:RECENT_LIMIT]]


@given(histories(), histories())
def test_a_survivor_combined_with_a_merged_customer_counts_both_histories(
    ours: list[RecordedEvent], theirs: list[RecordedEvent]
) -> None:
    survivor, merged = fold(ours), fold(theirs)
    assert survivor is not None and merged is not None
    merged = replace(merged, customer_id="C-merged")

    combined = customer_360.combine(survivor, [merged])

    both = [*ours, *theirs]
    times = [e.envelope.occurred_at for e in both]
    assert combined.by_type == dict(Counter(e.envelope.type for e in both))
    assert (combined.first_at, combined.last_at) == (min(times), max(times))
    assert combined.purchase_count == survivor.purchase_count + merged.purchase_count
    for currency in {*survivor.total_spent, *merged.total_spent}:
        assert combined.total_spent[currency] == survivor.total_spent.get(
            currency, 0
        ) + merged.total_spent.get(currency, 0)
    newest = sorted(((e.envelope.occurred_at, e.version) for e in both), reverse=True)[
        : customer_360.RECENT_LIMIT
    ]
    assert [(r.occurred_at, r.version) for r in combined.recent] == newest
    assert all(
        r.doc.get("customer_id") == "C-merged"
        for r in combined.recent
        if r.event_id in {e.envelope.event_id for e in theirs}
    )
    assert len(combined.open_complaint_ids) == len(survivor.open_complaint_ids) + len(
        merged.open_complaint_ids
    )
    assert (combined.version, combined.position) == (survivor.version, survivor.position)
