"""The customer 360 ("screen pop"): a pure fold of one customer's recorded events.

`to_json` writes the document the read model stores as JSONB and the API shows:

    {"customer_id": "C-1", "version": 7, "position": 1234,
     "profile": {"name": ..., "email": ..., "phone": ..., "address": ...},
     "touchpoints": {"total": 7, "by_type": {"call.logged": 2, ...},
                     "first_at": "2026-01-05T08:15:30Z", "last_at": "2026-02-01T09:00:00Z"},
     "purchases": {"count": 2, "total_spent": {"EUR": "1234.50"}, "last_purchase_at": ... | null,
                   "by_month": {"EUR": {"2026-01": "1000.00", "2026-02": "234.50"}}},
     "complaints": {"open": 1, "total": 2},
     "recent": [{"event_id": ..., "type": ..., "occurred_at": ..., "summary": ..., "version": 7}],
     "open_complaint_ids": ["K-7"]}

The API (`public_document`) adds, after "complaints", "open_complaints" and "satisfaction" from
the complaint cases (rm_complaint_cases), which know the SLA of the settings.

Times are RFC 3339 UTC with "Z"; money is a decimal string; profile fields not known yet are null.
`by_month` is the net spend (purchases minus refunds) by currency and UTC month of `occurred_at`,
the series desertion is judged on; a month missing from it is zero.
Two parts exist so that `from_json` can continue the fold: "open_complaint_ids" (sorted) and the
customer "version" of each recent item (the tie-break between equal `occurred_at`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from events.envelope import Envelope
from projections.complaint_signals import satisfaction_of
from projections.desertion import month_of
from projections.recorded import RecordedEvent, is_next, rfc3339
from projections.views import CustomerView

RECENT_LIMIT = 20
SUMMARY_LIMIT = 120
PROFILE_FIELDS = ("name", "email", "phone", "address")
RECENT_FIELDS = ("event_id", "type", "occurred_at", "summary", "version")

Payload = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Profile:
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    address: str | None = None


@dataclass(frozen=True, slots=True)
class RecentItem:
    """One item of "recent"; `doc` is its JSON-ready form, built once (never mutated)."""

    occurred_at: datetime
    version: int
    doc: dict[str, Any]

    @classmethod
    def of(cls, envelope: Envelope, version: int, summary: str) -> RecentItem:
        doc = {
            "event_id": envelope.event_id,
            "type": envelope.type,
            "occurred_at": rfc3339(envelope.occurred_at),
            "summary": summary,
            "version": version,
        }
        return cls(envelope.occurred_at, version, doc)

    @property
    def event_id(self) -> str:
        return self.doc["event_id"]

    @property
    def type(self) -> str:
        return self.doc["type"]

    @property
    def summary(self) -> str:
        return self.doc["summary"]


@dataclass(frozen=True, slots=True)
class Customer360:
    """The view of one customer after `version` (at global `position`); version 0 is empty.

    The dicts are never mutated: `apply` builds new ones.
    """

    customer_id: str
    version: int = 0
    position: int = 0
    profile: Profile = Profile()
    by_type: dict[str, int] = field(default_factory=dict)
    first_at: datetime | None = None
    last_at: datetime | None = None
    purchase_count: int = 0
    total_spent: dict[str, Decimal] = field(default_factory=dict)
    spend_by_month: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    last_purchase_at: datetime | None = None
    complaints_total: int = 0
    open_complaint_ids: frozenset[str] = frozenset()
    recent: tuple[RecentItem, ...] = ()

    @property
    def total_touchpoints(self) -> int:
        return sum(self.by_type.values())


def apply(view: Customer360 | None, event: RecordedEvent) -> Customer360:
    """The view after `event`; unchanged if already applied, VersionGap if versions are missing."""
    envelope = event.envelope
    if view is None:
        view = Customer360(envelope.customer_id)
    if not is_next(view.customer_id, view.version, event):
        return view
    at = envelope.occurred_at
    item = RecentItem.of(
        envelope, event.version, _shorten(_SUMMARIES[envelope.type](envelope.payload))
    )
    counted = replace(
        view,
        version=event.version,
        position=event.position,
        by_type=view.by_type | {envelope.type: view.by_type.get(envelope.type, 0) + 1},
        first_at=_earlier(view.first_at, at),
        last_at=_later(view.last_at, at),
        recent=tuple(sorted((*view.recent, item), key=_recency, reverse=True)[:RECENT_LIMIT]),
    )
    effect = _EFFECTS.get(envelope.type)
    return counted if effect is None else effect(counted, envelope)


def fold(events: Iterable[RecordedEvent], view: Customer360 | None = None) -> Customer360 | None:
    """Apply `events` of one customer in order to `view` (None: no event yet)."""
    for event in events:
        view = apply(view, event)
    return view


def to_json(view: Customer360) -> dict[str, Any]:
    """The JSON-ready document described in the module docstring."""
    return {
        "customer_id": view.customer_id,
        "version": view.version,
        "position": view.position,
        "profile": {
            "name": view.profile.name,
            "email": view.profile.email,
            "phone": view.profile.phone,
            "address": view.profile.address,
        },
        "touchpoints": {
            "total": view.total_touchpoints,
            "by_type": dict(sorted(view.by_type.items())),
            "first_at": _time_text(view.first_at),
            "last_at": _time_text(view.last_at),
        },
        "purchases": {
            "count": view.purchase_count,
            "total_spent": {c: f"{amount:f}" for c, amount in sorted(view.total_spent.items())},
            "last_purchase_at": _time_text(view.last_purchase_at),
            "by_month": {
                currency: {month: f"{amount:f}" for month, amount in sorted(months.items())}
                for currency, months in sorted(view.spend_by_month.items())
            },
        },
        "complaints": {"open": len(view.open_complaint_ids), "total": view.complaints_total},
        "recent": [r.doc for r in view.recent],
        "open_complaint_ids": sorted(view.open_complaint_ids),
    }


def from_json(doc: dict[str, Any]) -> Customer360:
    """The view stored by `to_json`, ready to continue folding."""
    touchpoints, purchases = doc["touchpoints"], doc["purchases"]
    return Customer360(
        customer_id=doc["customer_id"],
        version=doc["version"],
        position=doc["position"],
        profile=Profile(**doc["profile"]),
        by_type=dict(touchpoints["by_type"]),
        first_at=_time(touchpoints["first_at"]),
        last_at=_time(touchpoints["last_at"]),
        purchase_count=purchases["count"],
        total_spent={c: Decimal(amount) for c, amount in purchases["total_spent"].items()},
        spend_by_month={
            currency: {month: Decimal(amount) for month, amount in months.items()}
            for currency, months in purchases.get("by_month", {}).items()
        },
        last_purchase_at=_time(purchases["last_purchase_at"]),
        complaints_total=doc["complaints"]["total"],
        open_complaint_ids=frozenset(doc["open_complaint_ids"]),
        recent=tuple(
            RecentItem(
                datetime.fromisoformat(r["occurred_at"]),
                r["version"],
                {k: r[k] for k in RECENT_FIELDS},
            )
            for r in doc["recent"]
        ),
    )


CUSTOMER_360: CustomerView[Customer360] = CustomerView("customer_360", apply, to_json, from_json)
"""The read model for the projector: table rm_customer_360."""


def combine(survivor: Customer360, merged: Iterable[Customer360]) -> Customer360:
    """The survivor's view with the history of the customers merged into it (read-time merges,
    projections/merge_index.py): counts and spend added up, the earliest first and the latest
    last times, the latest items of all (each of a merged customer naming it), and the
    survivor's profile, with what it lacks taken from the merged (most recently active first).
    The survivor's version and position stay: they say how far its own events are applied."""
    view = survivor
    for other in sorted(merged, key=lambda v: (v.last_at is not None, v.last_at), reverse=True):
        theirs = tuple(_naming(item, other.customer_id) for item in other.recent)
        view = replace(
            view,
            profile=Profile(
                *(getattr(view.profile, f) or getattr(other.profile, f) for f in PROFILE_FIELDS)
            ),
            by_type=_added(view.by_type, other.by_type),
            first_at=_either(min, view.first_at, other.first_at),
            last_at=_either(max, view.last_at, other.last_at),
            purchase_count=view.purchase_count + other.purchase_count,
            total_spent=_added(view.total_spent, other.total_spent),
            spend_by_month={
                c: _added(view.spend_by_month.get(c, {}), other.spend_by_month.get(c, {}))
                for c in sorted({*view.spend_by_month, *other.spend_by_month})
            },
            last_purchase_at=_either(max, view.last_purchase_at, other.last_purchase_at),
            complaints_total=view.complaints_total + other.complaints_total,
            open_complaint_ids=view.open_complaint_ids
            | {f"{other.customer_id}/{i}" for i in other.open_complaint_ids},
            recent=tuple(sorted((*view.recent, *theirs), key=_recency, reverse=True))[
                :RECENT_LIMIT
            ],
        )
    return view


def _naming(item: RecentItem, customer_id: str) -> RecentItem:
    return replace(item, doc={**item.doc, "customer_id": customer_id})


def _added(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted({*a, *b})}


def _either(
    pick: Callable[[datetime, datetime], datetime], a: datetime | None, b: datetime | None
) -> datetime | None:
    return b if a is None else a if b is None else pick(a, b)


# --- effects on the view beyond counting, by type ------------------------------------------


def _registered(view: Customer360, envelope: Envelope) -> Customer360:
    return replace(view, profile=Profile(**{f: envelope.payload.get(f) for f in PROFILE_FIELDS}))


def _updated(view: Customer360, envelope: Envelope) -> Customer360:
    given = {f: v for f in PROFILE_FIELDS if (v := envelope.payload.get(f)) is not None}
    return replace(view, profile=replace(view.profile, **given))


def _purchased(view: Customer360, envelope: Envelope) -> Customer360:
    return replace(
        view,
        **_spent(view, envelope, Decimal(envelope.payload["total"])),
        purchase_count=view.purchase_count + 1,
        last_purchase_at=_later(view.last_purchase_at, envelope.occurred_at),
    )


def _refunded(view: Customer360, envelope: Envelope) -> Customer360:
    return replace(view, **_spent(view, envelope, -Decimal(envelope.payload["amount"])))


def _spent(view: Customer360, envelope: Envelope, amount: Decimal) -> dict[str, Any]:
    """The spend fields after `amount` more net spend: in total and in the event's month."""
    currency = envelope.payload["currency"]
    months = view.spend_by_month.get(currency, {})
    return {
        "total_spent": _plus(view.total_spent, currency, amount),
        "spend_by_month": view.spend_by_month
        | {currency: _plus(months, month_of(envelope.occurred_at), amount)},
    }


def _complaint_filed(view: Customer360, envelope: Envelope) -> Customer360:
    return replace(
        view,
        complaints_total=view.complaints_total + 1,
        open_complaint_ids=view.open_complaint_ids | {envelope.payload["complaint_id"]},
    )


def _complaint_resolved(view: Customer360, envelope: Envelope) -> Customer360:
    return replace(
        view, open_complaint_ids=view.open_complaint_ids - {envelope.payload["complaint_id"]}
    )


def _complaint_reopened(view: Customer360, envelope: Envelope) -> Customer360:
    return replace(
        view, open_complaint_ids=view.open_complaint_ids | {envelope.payload["complaint_id"]}
    )


_EFFECTS: dict[str, Callable[[Customer360, Envelope], Customer360]] = {
    "customer.registered": _registered,
    "customer.updated": _updated,
    "purchase.made": _purchased,
    "purchase.refunded": _refunded,
    "complaint.filed": _complaint_filed,
    "complaint.resolved": _complaint_resolved,
    "complaint.reopened": _complaint_reopened,
}


# --- one-line summaries for "recent", by type ----------------------------------------------


def _registered_summary(p: Payload) -> str:
    return f"Registered as {p['name']}"


def _updated_summary(p: Payload) -> str:
    return "Profile updated: " + ", ".join(f for f in PROFILE_FIELDS if p.get(f) is not None)


def _call_summary(p: Payload) -> str:
    text = f"{p['direction'].capitalize()} call, {_duration(p['duration_seconds'])}"
    if p.get("agent"):
        text += f" (agent {p['agent']})"
    return f"{text}: {p['outcome']}" if p.get("outcome") else text


def _email_summary(p: Payload) -> str:
    return f"{p['direction'].capitalize()} e-mail: {p['subject']}"


def _purchase_summary(p: Payload) -> str:
    items = sum(item["quantity"] for item in p["items"])
    noun = "item" if items == 1 else "items"
    return f"Purchase {p['order_id']}: {items} {noun}, {p['total']} {p['currency']}"


def _refund_summary(p: Payload) -> str:
    return f"Refund {p['amount']} {p['currency']} for {p['order_id']}"


def _complaint_filed_summary(p: Payload) -> str:
    return f"Complaint {p['complaint_id']} filed ({p['severity']}, {p['category']})"


def _complaint_resolved_summary(p: Payload) -> str:
    return f"Complaint {p['complaint_id']} resolved: {p['resolution']}"


def _complaint_assigned_summary(p: Payload) -> str:
    return f"Complaint {p['complaint_id']} assigned to {p['assignee']}"


def _complaint_reopened_summary(p: Payload) -> str:
    return f"Complaint {p['complaint_id']} reopened: {p['reason']}"


def _invoice_summary(p: Payload) -> str:
    return f"Invoice {p['invoice_id']}: {p['amount']} {p['currency']} due {p['due_date']}"


def _payment_summary(p: Payload) -> str:
    target = f"for {p['invoice_id']}" if p.get("invoice_id") else "on account"
    return f"Payment {p['payment_id']}: {p['amount']} {p['currency']} {target}"


def _credit_summary(p: Payload) -> str:
    return f"Credit limit {p['credit_limit']} {p['currency']}, {p['payment_terms_days']} days"


def _visit_summary(p: Payload) -> str:
    return f"Viewed {p['url']}"


def _followup_scheduled_summary(p: Payload) -> str:
    return f"Follow-up {p['followup_id']} due {p['due_at']}: {p['reason']}"


def _followup_completed_summary(p: Payload) -> str:
    text = f"Follow-up {p['followup_id']} completed"
    return f"{text}: {p['outcome']}" if p.get("outcome") else text


def _merged_summary(p: Payload) -> str:
    return f"Merged into {p['into_customer_id']}"


_SUMMARIES: dict[str, Callable[[Payload], str]] = {
    "customer.registered": _registered_summary,
    "customer.updated": _updated_summary,
    "call.logged": _call_summary,
    "email.logged": _email_summary,
    "purchase.made": _purchase_summary,
    "purchase.refunded": _refund_summary,
    "complaint.filed": _complaint_filed_summary,
    "complaint.resolved": _complaint_resolved_summary,
    "complaint.assigned": _complaint_assigned_summary,
    "complaint.reopened": _complaint_reopened_summary,
    "invoice.issued": _invoice_summary,
    "payment.received": _payment_summary,
    "credit.terms.set": _credit_summary,
    "web.visited": _visit_summary,
    "followup.scheduled": _followup_scheduled_summary,
    "followup.completed": _followup_completed_summary,
    "customer.merged": _merged_summary,
}


# --- helpers -------------------------------------------------------------------------------


def _recency(item: RecentItem) -> tuple[datetime, int]:
    return item.occurred_at, item.version


def _earlier(current: datetime | None, moment: datetime) -> datetime:
    return moment if current is None else min(current, moment)


def _later(current: datetime | None, moment: datetime) -> datetime:
    return moment if current is None else max(current, moment)


def _plus(totals: dict[str, Decimal], currency: str, amount: Decimal) -> dict[str, Decimal]:
    return totals | {currency: totals.get(currency, Decimal(0)) + amount}


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {seconds}s"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


def _shorten(text: str) -> str:
    """One line of at most SUMMARY_LIMIT characters."""
    line = " ".join(text.split())
    return line if len(line) <= SUMMARY_LIMIT else line[: SUMMARY_LIMIT - 1] + "…"


def _time_text(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


PUBLIC_FIELDS = (
    "customer_id", "version", "position", "profile", "touchpoints", "purchases", "complaints",
    "recent",
)  # fmt: skip


def public_document(
    doc: dict[str, Any],
    open_complaints: list[dict[str, Any]] | None = None,
    latest_verdict: bool | None = None,
) -> dict[str, Any]:
    """The stored document as the API shows it: documented key order, no internal state, and
    after "complaints" the customer's open complaint cases (each {complaint_id, category,
    severity, due_at, breached}, earliest deadline first; from the complaint cases, which know
    the SLA) and the satisfaction indicator they and the latest verdict give
    (projections.complaint_signals)."""
    public = {key: doc[key] for key in PUBLIC_FIELDS[:7]}
    cases = open_complaints or []
    public["open_complaints"] = cases
    public["satisfaction"] = satisfaction_of([c["breached"] for c in cases], latest_verdict)
    public["recent"] = doc["recent"]
    return public
