"""The event catalog: every touchpoint type, its payload fields per schema version, and the
upcasters that turn an older version into the current one."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from events.errors import InvalidEvent
from events.fields import (
    Field,
    FieldError,
    boolean,
    calendar_date,
    check_object,
    choice,
    currency,
    email,
    integer,
    money,
    object_list,
    text,
    timestamp,
)

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]


@dataclass(frozen=True, slots=True)
class EventSchema:
    """The payload of one event type at one schema version.

    `upcast` turns a payload of the previous version into this one (None for version 1).
    """

    type: str
    version: int
    fields: tuple[Field, ...]
    description: str
    upcast: Upcaster | None = None

    def check(self, payload: Any) -> None:
        """Raise InvalidEvent(schema_violation) naming the first bad field of `payload`."""
        try:
            check_object(payload, self.fields)
        except FieldError as error:
            raise InvalidEvent("schema_violation", f"payload{error.path}", error.message) from None


class Catalog:
    """Versioned schemas by event type. Validation accepts any known version; readers upcast
    stored payloads to the current version with `upcast`."""

    def __init__(self, schemas: Iterable[EventSchema]) -> None:
        self._schemas: dict[str, dict[int, EventSchema]] = {}
        for schema in schemas:
            versions = self._schemas.setdefault(schema.type, {})
            if schema.version in versions:
                raise ValueError(f"{schema.type} v{schema.version} is declared twice")
            versions[schema.version] = schema
        for type_, versions in self._schemas.items():
            expected = list(range(1, len(versions) + 1))
            if sorted(versions) != expected:
                raise ValueError(f"{type_}: versions must be 1..n, got {sorted(versions)}")
            if any(versions[v].upcast is None for v in expected[1:]):
                raise ValueError(f"{type_}: every version after 1 needs an upcaster")

    @property
    def types(self) -> list[str]:
        return sorted(self._schemas)

    def current_version(self, type_: str) -> int:
        return len(self._versions(type_))

    def schema(self, type_: str, version: int) -> EventSchema:
        versions = self._versions(type_)
        if version not in versions:
            raise InvalidEvent(
                "unsupported_version",
                "schema_version",
                f"{type_} has schema versions 1 to {len(versions)}, got {version}",
            )
        return versions[version]

    def schemas(self) -> list[EventSchema]:
        return [s for type_ in self.types for s in self._schemas[type_].values()]

    def upcast(self, type_: str, version: int, payload: Payload) -> Payload:
        """Bring a payload written at `version` up to the current version of its type."""
        versions = self._versions(type_)
        for next_version in range(version + 1, len(versions) + 1):
            upcaster = versions[next_version].upcast
            assert upcaster is not None
            payload = upcaster(payload)
        return payload

    def _versions(self, type_: str) -> dict[int, EventSchema]:
        try:
            return self._schemas[type_]
        except KeyError:
            raise InvalidEvent(
                "unknown_type", "type", f"unknown event type {type_!r}; see the catalog"
            ) from None


CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
"""A customer id in a payload field naming another customer: the envelope's pattern for
`customer_id` (events.envelope, which imports this module; a unit test holds them equal)."""
_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)


def customer_ref(name: str) -> Field:
    """A payload field naming another customer: a customer id, as in the envelope."""

    def check(value: Any) -> None:
        if not isinstance(value, str) or not _CUSTOMER_ID.fullmatch(value):
            raise FieldError(
                f"expected a customer id (1-64 characters of A-Z a-z 0-9 _ . : -), got {value!r}"
            )

    schema = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": CUSTOMER_ID_PATTERN}
    return Field(name, check, schema)


def _v1(type_: str, description: str, *fields: Field) -> EventSchema:
    return EventSchema(type_, 1, fields, description)


_DIRECTION = choice("direction", "inbound", "outbound")
_PROFILE = (
    email("email", required=False),
    text("phone", max_length=40, required=False),
    text("address", max_length=500, required=False),
)

CATALOG = Catalog(
    [
        _v1(
            "customer.registered",
            "A new customer became known to a department.",
            text("name", max_length=200),
            *_PROFILE,
        ),
        _v1(
            "customer.merged",
            "The customer was a duplicate, merged away into `into_customer_id`.",
            customer_ref("into_customer_id"),
        ),
        _v1(
            "customer.updated",
            "Profile details changed; absent fields keep their value.",
            text("name", max_length=200, required=False),
            *_PROFILE,
        ),
        _v1(
            "call.logged",
            "A phone call with the customer.",
            _DIRECTION,
            text("phone", max_length=40, required=False),
            integer("duration_seconds"),
            text("agent", max_length=200, required=False),
            text("outcome", max_length=200, required=False),
            text("notes", max_length=4000, required=False),
        ),
        _v1(
            "email.logged",
            "An e-mail to or from the customer.",
            _DIRECTION,
            text("subject", max_length=500),
            email("address", required=False),
        ),
        _v1(
            "purchase.made",
            "An order was placed and paid or invoiced.",
            text("order_id", max_length=100),
            object_list(
                "items",
                text("sku", max_length=100),
                text("name", max_length=200, required=False),
                integer("quantity", minimum=1),
                money("unit_price"),
            ),
            money("total"),
            currency(),
        ),
        _v1(
            "purchase.refunded",
            "Money was given back for an order.",
            text("order_id", max_length=100),
            money("amount", positive=True),
            currency(),
            text("reason", max_length=1000, required=False),
        ),
        _v1(
            "complaint.filed",
            "The customer complained.",
            text("complaint_id", max_length=100),
            text("category", max_length=100),
            text("product_sku", max_length=100, required=False),
            choice("severity", "low", "medium", "high"),
            text("description", max_length=4000),
        ),
        _v1(
            "complaint.resolved",
            "A complaint was resolved.",
            text("complaint_id", max_length=100),
            text("resolution", max_length=4000),
            boolean("satisfied", required=False),
        ),
        _v1(
            "complaint.assigned",
            "A complaint was given to someone to resolve.",
            text("complaint_id", max_length=100),
            text("assignee", max_length=200),
        ),
        _v1(
            "complaint.reopened",
            "A resolved complaint was opened again.",
            text("complaint_id", max_length=100),
            text("reason", max_length=1000),
        ),
        _v1(
            "invoice.issued",
            "Accounting issued an invoice.",
            text("invoice_id", max_length=100),
            money("amount", positive=True),
            currency(),
            calendar_date("due_date"),
        ),
        _v1(
            "payment.received",
            "Accounting received a payment, for one invoice or on account.",
            text("payment_id", max_length=100),
            money("amount", positive=True),
            currency(),
            text("invoice_id", max_length=100, required=False),
        ),
        _v1(
            "credit.terms.set",
            "Credit set the customer's limit and payment terms.",
            money("credit_limit"),
            currency(),
            integer("payment_terms_days"),
        ),
        _v1(
            "web.visited",
            "The customer viewed a page of the web shop.",
            text("url", max_length=2000),
            text("product_sku", max_length=100, required=False),
            text("session_id", max_length=200, required=False),
        ),
        _v1(
            "followup.scheduled",
            "Someone must contact the customer by a time.",
            text("followup_id", max_length=100),
            timestamp("due_at"),
            text("reason", max_length=1000),
            text("assignee", max_length=200, required=False),
        ),
        _v1(
            "followup.completed",
            "A scheduled follow-up was done.",
            text("followup_id", max_length=100),
            text("outcome", max_length=1000, required=False),
        ),
    ]
)
