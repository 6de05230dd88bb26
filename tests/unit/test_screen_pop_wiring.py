"""The pure parts of the screen pop's wiring: the identifier index's rows, the offers view's fold,
JSON round trip and shared-table deltas, and the 360's offers and segments from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from events.envelope import validate_envelope
from projections.identifiers import identifier_rows
from projections.offer_view import (
    apply_own,
    from_json,
    item_rows,
    order_rows,
    pair_rows,
    segments_of,
    spend_rows,
    to_json,
)
from projections.offers import CoPurchases, basket_change
from projections.recorded import RecordedEvent
from tests.unit.examples import envelope

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


def event(type_: str, payload: dict[str, Any], version: int, at: datetime,
          customer_id: str = "C-1") -> RecordedEvent:  # fmt: skip
    wire = envelope(type_, payload, customer_id=customer_id, occurred_at=at.isoformat())
    return RecordedEvent(version, version, validate_envelope(wire))


def order(order_id: str, skus: list[str], total: str = "10.00") -> dict[str, Any]:
    items = [{"sku": s, "name": f"N-{s}", "quantity": 1, "unit_price": "0"} for s in skus]
    items[0]["unit_price"] = total
    return {"order_id": order_id, "items": items, "total": total, "currency": "EUR"}


def test_identifier_rows_merge_one_key_per_batch_and_drop_placeholders() -> None:
    events = [
        event(
            "customer.registered",
            {"name": "A", "phone": "030 90184417", "email": " A@Example.com"},
            1,
            NOW - timedelta(days=2),
        ),
        event(
            "call.logged",
            {"direction": "inbound", "duration_seconds": 5, "phone": "+49 30 9018 4417"},
            2,
            NOW,
        ),
        event("customer.updated", {"phone": "0000000"}, 3, NOW),
        event(
            "invoice.issued",
            {"invoice_id": "I", "amount": "1", "currency": "EUR", "due_date": "2026-12-01"},
            4,
            NOW,
        ),
    ]

    assert identifier_rows(events, "DE") == [
        ("email", "a@example.com", "C-1", "customer.registered", NOW - timedelta(days=2),
         NOW - timedelta(days=2)),
        ("phone", "+493090184417", "C-1", "call.logged", NOW - timedelta(days=2), NOW),
    ]  # fmt: skip
    assert identifier_rows(events[::-1], "DE") == identifier_rows(events, "DE"), "order-free"


def test_the_deltas_of_the_shared_counts_add_up_to_the_counted_baskets() -> None:
    steps = [
        event("purchase.made", order("O-1", ["A", "B"]), 2, NOW),
        event("web.visited", {"url": "https://s/p/a", "product_sku": "A"}, 4, NOW),
        event("purchase.made", order("O-1", ["A", "B"]), 5, NOW),  # a resend: nothing
        event("purchase.made", order("O-2", ["A", "C"], "5.00"), 6, NOW),
        event(
            "purchase.refunded",
            {"order_id": "O-2", "amount": "5.00", "currency": "EUR"},
            7,
            NOW + timedelta(days=1),
        ),
    ]
    expected, state, pairs, items, orders = CoPurchases(), None, {}, {}, 0
    for step in steps:
        change = basket_change(state.activity if state else None, step)
        if change is not None:
            expected.apply(change)
        before, state = state, apply_own(state, step)
        state = from_json(to_json(state))  # as the projector stores it between batches
        assert to_json(state) == to_json(from_json(to_json(state)))
        for a, b, d in pair_rows(before, state):
            pairs[a, b] = pairs.get((a, b), 0) + d
        for s, d, _ in item_rows(before, state):
            items[s] = items.get(s, 0) + d
        orders += sum(d for (d,) in order_rows(before, state))

    assert state is not None and state.version == 7
    assert orders == expected.orders == 1
    assert {k: v for k, v in items.items() if v} == expected.products == {"A": 1, "B": 1}
    assert {k: v for k, v in pairs.items() if v} == {("A", "B"): 1, ("B", "A"): 1}
    assert state.names == {"A": "N-A", "B": "N-B", "C": "N-C"}
    assert spend_rows(None, state) == [
        ("C-1", "EUR", NOW.date(), Decimal("15.00")),
        ("C-1", "EUR", NOW.date() + timedelta(days=1), Decimal("-5.00")),
    ]


def test_segments_without_cut_points_have_no_tier_and_a_customer_without_spend_neither() -> None:
    state = apply_own(None, event("purchase.made", order("O-1", ["A"], "70.00"), 1, NOW))
    cuts = {"EUR": [10, "100", "50", "20", "2026-11-23T12:00:00Z"]}

    assert segments_of(state, None, NOW)["tier"] is None
    assert segments_of(state, cuts, NOW)["tier"] == "gold"
    assert segments_of(state, cuts, NOW)["net_spend_12m"] == {"currency": "EUR", "amount": "70.00"}
    assert segments_of(None, cuts, NOW)["tier"] is None
