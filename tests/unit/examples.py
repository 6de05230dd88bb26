"""One valid example of every catalog type, shared by the unit tests of the wire contract.

`envelope(type_)` returns a fresh, mutable wire-form dict (as `orjson.loads` would give it),
so a test may change it freely without touching the examples of other tests.
"""

from __future__ import annotations

import copy
from typing import Any

EVENT_ID = "3f1c9a52-8d7e-4b6a-9c1d-2e5f7a8b9c0d"
CUSTOMER_ID = "C-0042"
OCCURRED_AT = "2026-01-05T10:15:30.250+02:00"
SOURCE = "sales"

VALID_PAYLOADS: dict[str, dict[str, Any]] = {
    "customer.registered": {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": "+44 20 7946 0000",
        "address": "12 St James's Square, London",
    },
    "customer.updated": {"email": "ada.lovelace@example.com"},
    "customer.merged": {"into_customer_id": "C-0007"},
    "call.logged": {
        "direction": "inbound",
        "phone": "+44 20 7946 0000",
        "duration_seconds": 312,
        "agent": "Grace",
        "outcome": "callback requested",
        "notes": "Asked about the analytical engine warranty.",
    },
    "email.logged": {
        "direction": "outbound",
        "subject": "Your order",
        "address": "ada@example.com",
    },
    "purchase.made": {
        "order_id": "O-1001",
        "items": [
            {"sku": "ENG-1", "name": "Difference engine", "quantity": 1, "unit_price": "100.00"},
            {"sku": "CARD-50", "quantity": 2, "unit_price": "14.95"},
        ],
        "total": "129.90",
        "currency": "EUR",
    },
    "purchase.refunded": {
        "order_id": "O-1001",
        "amount": "14.95",
        "currency": "EUR",
        "reason": "damaged in transit",
    },
    "complaint.filed": {
        "complaint_id": "K-7",
        "category": "delivery",
        "product_sku": "CARD-50",
        "severity": "medium",
        "description": "One box of cards arrived crushed.",
    },
    "complaint.resolved": {
        "complaint_id": "K-7",
        "resolution": "Refunded one box.",
        "satisfied": True,
    },
    "complaint.assigned": {"complaint_id": "K-7", "assignee": "Grace"},
    "complaint.reopened": {"complaint_id": "K-7", "reason": "The new box was crushed too."},
    "invoice.issued": {
        "invoice_id": "INV-2026-001",
        "amount": "129.90",
        "currency": "EUR",
        "due_date": "2026-02-04",
    },
    "payment.received": {
        "payment_id": "PAY-9",
        "amount": "129.90",
        "currency": "EUR",
        "invoice_id": "INV-2026-001",
    },
    "credit.terms.set": {"credit_limit": "5000", "currency": "EUR", "payment_terms_days": 30},
    "web.visited": {
        "url": "https://shop.example/products/ENG-1",
        "product_sku": "ENG-1",
        "session_id": "s-81f2",
    },
    "followup.scheduled": {
        "followup_id": "F-3",
        "due_at": "2026-01-12T09:00:00Z",
        "reason": "Check the replacement arrived.",
        "assignee": "Grace",
    },
    "followup.completed": {"followup_id": "F-3", "outcome": "Customer is happy."},
}


def envelope(type_: str, payload: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A valid wire-form envelope of `type_` (its example payload unless `payload` is given),
    with envelope `fields` overriding the defaults."""
    data: dict[str, Any] = {
        "event_id": EVENT_ID,
        "type": type_,
        "schema_version": 1,
        "customer_id": CUSTOMER_ID,
        "occurred_at": OCCURRED_AT,
        "source": SOURCE,
        "payload": copy.deepcopy(VALID_PAYLOADS[type_] if payload is None else payload),
    }
    data.update(fields)
    return data
