"""Duplicate customer records, merged: for one customer in `EVERY`, the web shop opened a
second account ("W-" and the customer's number) with the same e-mail in capitals and the
phone written without spaces, registered and bought there once, until an agent noticed the
duplicate on a call and merged it into the customer (`customer.merged`). Sometimes an order
placed on the duplicate before the merge is refunded after it: an event for the merged id.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from random import Random
from typing import Any

from infra.demo.catalog import PRODUCTS

EVERY = 40
_DAY = 86_400


def duplicate_of(
    customer_id: str, contact: dict[str, str], currency: str, registered: int, end: int, seed: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(timestamp, envelope) of the duplicate account's events, in time order; none when the
    customer registered too late in the period for a duplicate and its merge."""
    rng = Random(f"{seed}:{customer_id}")
    opened = registered + int(rng.uniform(20, 200) * _DAY)
    merged = opened + int(rng.uniform(5, 40) * _DAY)
    if merged >= end:
        return
    duplicate = "W-" + customer_id.split("-", 1)[1]
    profile = {"name": contact["name"], "email": contact["email"].upper()}
    if "phone" in contact:
        profile["phone"] = re.sub(r"[^\d+]", "", contact["phone"])
    product = rng.choice(PRODUCTS)
    price = product.price_in(currency)
    order = {
        "order_id": f"{duplicate}-O1",
        "items": [{"sku": product.sku, "name": product.name, "quantity": 1,
                   "unit_price": str(price)}],
        "total": str(price),
        "currency": currency,
    }  # fmt: skip
    bought = opened + rng.randint(600, 3 * _DAY)
    events = [
        (opened, "customer.registered", "web", profile),
        (bought, "purchase.made", "web", order),
        (merged, "customer.merged", "call-center", {"into_customer_id": customer_id}),
    ]
    refunded = merged + rng.randint(3600, 5 * _DAY)
    if rng.random() < 0.3 and refunded < end:
        refund = {"order_id": order["order_id"], "amount": str(price), "currency": currency,
                  "reason": "returned"}  # fmt: skip
        events.append((refunded, "purchase.refunded", "web", refund))
    for ts, type_, source, payload in events:
        yield (
            ts,
            {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "type": type_,
                "schema_version": 1,
                "customer_id": duplicate,
                "occurred_at": datetime.fromtimestamp(ts, UTC).isoformat(),
                "source": source,
                "payload": payload,
            },
        )


def is_duplicate(index: int) -> bool:
    return index % EVERY == 0
