"""The typed side of the producer SDK: one method per catalog type, and the types they take.

`TypedTouchpoints` turns keyword arguments into the wire-form payload of its event type (money as
decimal strings, dates as "YYYY-MM-DD", optional fields left out) and hands it to `send`;
`TouchpointProducer` (events.producer) mixes it in and implements `send`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, TypedDict, Unpack

from events.errors import InvalidEvent

Money = Decimal | int | str
"""An amount: `Decimal`, `int` or a decimal string such as "129.90"; never a float."""


class EventOptions(TypedDict, total=False):
    """Envelope fields every typed method accepts besides the payload.

    `occurred_at`: when it happened; an aware `datetime` or an RFC 3339 string with offset
    (default: now, UTC). `event_id`: a UUID string, generated when absent; reuse it to resend the
    same event (the platform records it once). `correlation_id`: your reference linking events of
    one business operation. `source`: overrides the producer's `source` for this event.
    """

    occurred_at: datetime | str
    event_id: str
    correlation_id: str
    source: str


@dataclass(frozen=True, slots=True)
class Item:
    """One line of a purchase: `quantity` units of `sku` at `unit_price` each."""

    sku: str
    quantity: int
    unit_price: Money
    name: str | None = None


class TypedTouchpoints:
    """One typed method per catalog type, each also taking the keywords of `EventOptions`; each
    returns the event_id. Mixed into `TouchpointProducer`, which implements `send`."""

    def send(
        self,
        type: str,
        customer_id: str,
        payload: Mapping[str, Any],
        *,
        schema_version: int = 1,
        occurred_at: datetime | str | None = None,
        event_id: str | None = None,
        correlation_id: str | None = None,
        source: str | None = None,
    ) -> str:
        """Send one event; implemented by the class this is mixed into."""
        raise NotImplementedError

    def customer_registered(
        self,
        customer_id: str,
        *,
        name: str,
        email: str | None = None,
        phone: str | None = None,
        address: str | None = None,
        **options: Unpack[EventOptions],
    ) -> str:
        """A new customer became known to a department."""
        fields = _fields(name=name, email=email, phone=phone, address=address)
        return self.send("customer.registered", customer_id, fields, **options)

    def customer_updated(
        self,
        customer_id: str,
        *,
        name: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        address: str | None = None,
        **options: Unpack[EventOptions],
    ) -> str:
        """Profile details changed; fields left out keep their value."""
        fields = _fields(name=name, email=email, phone=phone, address=address)
        return self.send("customer.updated", customer_id, fields, **options)

    def customer_merged(
        self, customer_id: str, *, into_customer_id: str, **options: Unpack[EventOptions]
    ) -> str:
        """`customer_id` is a duplicate of `into_customer_id` and is merged away into it; sent on
        the stream of the customer merged away. The platform refuses (dead-letters) a merge into
        itself, into an unknown customer or one merged away, and a second merge of a customer."""
        fields = _fields(into_customer_id=into_customer_id)
        return self.send("customer.merged", customer_id, fields, **options)

    def call_logged(
        self,
        customer_id: str,
        *,
        direction: Literal["inbound", "outbound"],
        duration_seconds: int,
        phone: str | None = None,
        agent: str | None = None,
        outcome: str | None = None,
        notes: str | None = None,
        **options: Unpack[EventOptions],
    ) -> str:
        """A phone call with the customer."""
        fields = _fields(
            direction=direction,
            duration_seconds=duration_seconds,
            phone=phone,
            agent=agent,
            outcome=outcome,
            notes=notes,
        )
        return self.send("call.logged", customer_id, fields, **options)

    def email_logged(
        self,
        customer_id: str,
        *,
        direction: Literal["inbound", "outbound"],
        subject: str,
        address: str | None = None,
        **options: Unpack[EventOptions],
    ) -> str:
        """An e-mail to or from the customer (`address`: the customer's address used)."""
        fields = _fields(direction=direction, subject=subject, address=address)
        return self.send("email.logged", customer_id, fields, **options)

    def purchase_made(
        self,
        customer_id: str,
        *,
        order_id: str,
        items: Sequence[Item | Mapping[str, Any]],
        total: Money,
        currency: str,
        **options: Unpack[EventOptions],
    ) -> str:
        """An order was placed and paid or invoiced. `items`: `Item`s or mappings with the same
        keys; `total` and each `unit_price` are Money; `currency` an ISO 4217 code."""
        lines = [_item(item, f"items[{i}]") for i, item in enumerate(items)]
        fields = _fields(
            order_id=order_id, items=lines, total=_money(total, "total"), currency=currency
        )
        return self.send("purchase.made", customer_id, fields, **options)

    def purchase_refunded(
        self,
        customer_id: str,
        *,
        order_id: str,
        amount: Money,
        currency: str,
        reason: str | None = None,
        **options: Unpack[EventOptions],
    ) -> str:
        """Money was given back for an order (`amount` > 0)."""
        fields = _fields(
            order_id=order_id, amount=_money(amount, "amount"), currency=currency, reason=reason
        )
        return self.send("purchase.refunded", customer_id, fields, **options)

    def complaint_filed(
        self,
        customer_id: str,
        *,
        complaint_id: str,
        category: str,
        severity: Literal["low", "medium", "high"],
        description: str,
        product_sku: str | None = None,
        **options: Unpack[EventOptions],
    ) -> str:
        """The customer complained."""
        fields = _fields(
            complaint_id=complaint_id,
            category=category,
            product_sku=product_sku,
            severity=severity,
            description=description,
        )
        return self.send("complaint.filed", customer_id, fields, **options)

    def complaint_resolved(
        self,
        customer_id: str,
        *,
        complaint_id: str,
        resolution: str,
        satisfied: bool | None = None,
        **options: Unpack[EventOptions],
    ) -> str:
        """A complaint was resolved (`satisfied`: the customer's verdict, if known)."""
        fields = _fields(complaint_id=complaint_id, resolution=resolution, satisfied=satisfied)
        return self.send("complaint.resolved", customer_id, fields, **options)

    def complaint_assigned(
        self, customer_id: str, *, complaint_id: str, assignee: str, **options: Unpack[EventOptions]
    ) -> str:
        """An open complaint was given to `assignee` to handle."""
        fields = _fields(complaint_id=complaint_id, assignee=assignee)
        return self.send("complaint.assigned", customer_id, fields, **options)

    def complaint_reopened(
        self, customer_id: str, *, complaint_id: str, reason: str, **options: Unpack[EventOptions]
    ) -> str:
        """A resolved complaint was opened again."""
        fields = _fields(complaint_id=complaint_id, reason=reason)
        return self.send("complaint.reopened", customer_id, fields, **options)

    def invoice_issued(
        self,
        customer_id: str,
        *,
        invoice_id: str,
        amount: Money,
        currency: str,
        due_date: date | str,
        **options: Unpack[EventOptions],
    ) -> str:
        """Accounting issued an invoice (`due_date`: a `date` or "YYYY-MM-DD")."""
        fields = _fields(
            invoice_id=invoice_id,
            amount=_money(amount, "amount"),
            currency=currency,
            due_date=due_date.isoformat() if isinstance(due_date, date) else due_date,
        )
        return self.send("invoice.issued", customer_id, fields, **options)

    def payment_received(
        self,
        customer_id: str,
        *,
        payment_id: str,
        amount: Money,
        currency: str,
        invoice_id: str | None = None,
        **options: Unpack[EventOptions],
    ) -> str:
        """Accounting received a payment, for one invoice or on account."""
        fields = _fields(
            payment_id=payment_id,
            amount=_money(amount, "amount"),
            currency=currency,
            invoice_id=invoice_id,
        )
        return self.send("payment.received", customer_id, fields, **options)

    def credit_terms_set(
        self,
        customer_id: str,
        *,
        credit_limit: Money,
        currency: str,
        payment_terms_days: int,
        **options: Unpack[EventOptions],
    ) -> str:
        """Credit set the customer's limit and payment terms."""
        fields = _fields(
            credit_limit=_money(credit_limit, "credit_limit"),
            currency=currency,
            payment_terms_days=payment_terms_days,
        )
        return self.send("credit.terms.set", customer_id, fields, **options)

    def web_visited(
        self,
        customer_id: str,
        *,
        url: str,
        product_sku: str | None = None,
        session_id: str | None = None,
        **options: Unpack[EventOptions],
    ) -> str:
        """The customer viewed a page of the web shop."""
        fields = _fields(url=url, product_sku=product_sku, session_id=session_id)
        return self.send("web.visited", customer_id, fields, **options)

    def followup_scheduled(
        self,
        customer_id: str,
        *,
        followup_id: str,
        due_at: datetime | str,
        reason: str,
        assignee: str | None = None,
        **options: Unpack[EventOptions],
    ) -> str:
        """Someone must contact the customer by `due_at` (an aware `datetime` or RFC 3339)."""
        fields = _fields(
            followup_id=followup_id,
            due_at=_rfc3339(due_at, "payload.due_at"),
            reason=reason,
            assignee=assignee,
        )
        return self.send("followup.scheduled", customer_id, fields, **options)

    def followup_completed(
        self,
        customer_id: str,
        *,
        followup_id: str,
        outcome: str | None = None,
        **options: Unpack[EventOptions],
    ) -> str:
        """A scheduled follow-up was done."""
        fields = _fields(followup_id=followup_id, outcome=outcome)
        return self.send("followup.completed", customer_id, fields, **options)


def _fields(**values: Any) -> dict[str, Any]:
    """A payload from keyword arguments, without the optional fields left out (None)."""
    return {name: value for name, value in values.items() if value is not None}


def _money(value: Money, field: str) -> Any:
    """A decimal string for `Decimal` and `int`; a str (or a wrong type, for validation to name)
    as given. A float raises TypeError: it cannot hold amounts such as 0.10 exactly."""
    if isinstance(value, float):
        raise TypeError(
            f"{field}: money must be Decimal, int or a decimal string, not float ({value!r}): "
            "floats cannot hold amounts such as 0.10 exactly"
        )
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _item(item: Item | Mapping[str, Any], path: str) -> dict[str, Any]:
    if isinstance(item, Item):
        line = {"sku": item.sku, "name": item.name, "quantity": item.quantity}
        price: Any = item.unit_price
    else:
        line = dict(item)
        price = line.get("unit_price")
    line["unit_price"] = None if price is None else _money(price, f"{path}.unit_price")
    return _fields(**line)


def _rfc3339(value: datetime | str, field: str) -> Any:
    """RFC 3339 text for an aware datetime; anything else as given, for validation to judge."""
    if not isinstance(value, datetime):
        return value
    if value.utcoffset() is None:
        raise InvalidEvent(
            "schema_violation",
            field,
            f"naive datetime {value.isoformat()}: give it a timezone, e.g. datetime.now(UTC)",
        )
    return value.isoformat()


__all__ = ["EventOptions", "Item", "Money", "TypedTouchpoints"]
