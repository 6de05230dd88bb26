"""Read-time merges, the pure parts: the merge index's rows, the balance summary of a survivor
with the customers merged into it, and the offers activity of both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from events.envelope import validate_envelope
from projections import offer_view
from projections.balance import combined_summary
from projections.merge_index import merge_rows
from projections.offer_view import apply_own, owned_skus
from projections.offers import likely_next
from projections.recorded import RecordedEvent
from tests.unit.examples import envelope

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


def event(customer_id: str, type_: str, payload: dict[str, Any], version: int,
          at: datetime, position: int = 0) -> RecordedEvent:  # fmt: skip
    wire = envelope(type_, payload, customer_id=customer_id, occurred_at=at.isoformat())
    return RecordedEvent(position or version, version, validate_envelope(wire))


def purchase(
    customer_id: str, order_id: str, sku: str, version: int, at: datetime
) -> RecordedEvent:
    items = [{"sku": sku, "name": f"N-{sku}", "quantity": 1, "unit_price": "10.00"}]
    payload = {"order_id": order_id, "items": items, "total": "10.00", "currency": "EUR"}
    return event(customer_id, "purchase.made", payload, version, at)


def test_merge_rows_keep_one_row_per_merged_customer_in_key_order() -> None:
    events = [
        event("C-9", "customer.merged", {"into_customer_id": "C-2"}, 4, NOW, position=40),
        event("C-3", "call.logged", {"direction": "inbound", "duration_seconds": 5}, 1, NOW),
        event("C-7", "customer.merged", {"into_customer_id": "C-2"}, 2, NOW, position=12),
    ]

    rows = merge_rows(events)

    assert [(r[0], r[1], r[4]) for r in rows] == [("C-7", "C-2", 12), ("C-9", "C-2", 40)]
    assert rows[0][3] == events[2].envelope.event_id


def test_a_combined_balance_adds_up_outstanding_and_keeps_the_survivor_s_credit() -> None:
    survivor = {"outstanding": {"EUR": "100.00"}, "overdue": {"EUR": "0"},
                "credit_limit": "500", "available_credit": "400.00", "currency": "EUR"}  # fmt: skip
    merged = {"outstanding": {"EUR": "50.50", "USD": "7"}, "overdue": {"EUR": "50.50"},
              "credit_limit": "9000", "available_credit": "8949.50", "currency": "EUR"}  # fmt: skip

    combined = combined_summary([survivor, merged])

    assert combined == {
        "outstanding": {"EUR": "150.50", "USD": "7"},
        "overdue": {"EUR": "50.50"},
        "credit_limit": "500",
        "available_credit": "349.50",
        "currency": "EUR",
    }
    no_terms = survivor | {"credit_limit": None, "available_credit": None, "currency": None}
    assert combined_summary([no_terms, merged])["available_credit"] is None


def test_combined_offers_count_the_merged_customer_s_orders_as_the_survivor_s() -> None:
    days = (90, 60, 30)
    ours = None
    for version, d in enumerate(days[:2], start=1):
        ours = apply_own(
            ours, purchase("C-2", f"O-{version}", "BEANS", version, NOW - timedelta(d))
        )
    theirs = apply_own(None, purchase("C-7", "O-1", "BEANS", 1, NOW - timedelta(days[2])))
    theirs = apply_own(theirs, purchase("C-7", "O-2", "MUG", 2, NOW - timedelta(days=5)))
    assert ours is not None and not likely_next(ours.activity, NOW)  # 2 days only: no habit

    combined = offer_view.combine(ours, [theirs])

    assert owned_skus(combined) == ["BEANS", "MUG"]
    assert len(combined.activity.orders) == 4  # O-1 and O-2 of each, apart
    habit = likely_next(combined.activity, NOW)
    assert [(r.sku, r.interval_days, r.last_on) for r in habit] == [
        ("BEANS", 30, (NOW - timedelta(days=30)).date())
    ]
    assert offer_view.trailing_spend(combined.activity, NOW) == {"EUR": Decimal("40.00")}
    assert combined.customer_id == "C-2" and combined.version == ours.version
