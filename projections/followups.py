"""Follow-ups: the work list folded from one customer's `followup.scheduled` and
`followup.completed`, the `followup.overdue` alert, and the post-purchase scheduling policy.

Rules of the fold:
- `followup.scheduled` creates the item; scheduling an open item again reschedules it (due time
  and reason replaced; an absent assignee keeps the one it had). A done item stays done: a later
  scheduling of its id is ignored.
- `followup.completed` makes the item done (the first completion wins). A completion of an id not
  scheduled yet is held and applied when the scheduling arrives (departments send independently).
- Status at `now`: `done` once completed, `overdue` while open after its due time (strictly: at
  the due time it is still `open`), otherwise `open`.

`to_json` writes the read-model document:

    {"customer_id": "C-1", "version": 7, "position": 1234,
     "items": {"F-1": {"followup_id": "F-1", "due_at": "…Z", "reason": "…", "assignee": "ana",
                       "scheduled_at": "…Z", "completed_at": null, "outcome": null}},
     "held": {"F-9": {"completed_at": "…Z", "outcome": "…"}}}
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import orjson

from events.envelope import Envelope
from events.fields import parse_rfc3339
from projections.alerts import FOLLOWUP_OVERDUE, Alert, alert_id
from projections.recorded import RecordedEvent, is_next, rfc3339
from projections.views import CustomerView, RowTable

Status = Literal["open", "done", "overdue"]

FOLLOWUP_NAMESPACE = uuid.UUID("6b0d7f0e-3c1a-4a5e-9b7d-2f4c8e1a9d53")
"""Fixed forever: changing it would schedule every post-purchase follow-up again."""
OVERDUE_ACTION = "Call the customer now, or reschedule the follow-up with a new due time."


@dataclass(frozen=True, slots=True)
class FollowUp:
    """One item of the work list; `scheduled_at` is when it was (last) scheduled."""

    followup_id: str
    customer_id: str
    due_at: datetime
    reason: str
    scheduled_at: datetime
    assignee: str | None = None
    completed_at: datetime | None = None
    outcome: str | None = None

    @property
    def done(self) -> bool:
        return self.completed_at is not None


@dataclass(frozen=True, slots=True)
class Completion:
    completed_at: datetime
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class FollowUps:
    """The follow-ups of one customer after `version` (at global `position`); `held` keeps the
    completions of ids not scheduled yet. Dicts are never mutated."""

    customer_id: str
    version: int = 0
    position: int = 0
    items: dict[str, FollowUp] = field(default_factory=dict)
    held: dict[str, Completion] = field(default_factory=dict)


def status_at(item: FollowUp, now: datetime) -> Status:
    if item.done:
        return "done"
    return "overdue" if now > item.due_at else "open"


def apply(state: FollowUps | None, event: RecordedEvent) -> FollowUps:
    """The state after `event`; unchanged if already applied, VersionGap if versions are missing."""
    envelope = event.envelope
    if state is None:
        state = FollowUps(envelope.customer_id)
    if not is_next(state.customer_id, state.version, event):
        return state
    state = replace(state, version=event.version, position=event.position)
    if envelope.type == "followup.scheduled":
        return _scheduled(state, envelope)
    if envelope.type == "followup.completed":
        return _completed(state, envelope)
    return state


def _scheduled(state: FollowUps, envelope: Envelope) -> FollowUps:
    p = envelope.payload
    followup_id: str = p["followup_id"]
    current = state.items.get(followup_id)
    if current is not None and current.done:
        return state
    item = FollowUp(
        followup_id=followup_id,
        customer_id=state.customer_id,
        due_at=parse_rfc3339(p["due_at"]),
        reason=p["reason"],
        scheduled_at=envelope.occurred_at,
        assignee=p.get("assignee") or (None if current is None else current.assignee),
    )
    held = state.held.get(followup_id)
    if held is not None:
        item = replace(item, completed_at=held.completed_at, outcome=held.outcome)
        rest = {k: v for k, v in state.held.items() if k != followup_id}
        return replace(state, items=state.items | {followup_id: item}, held=rest)
    return replace(state, items=state.items | {followup_id: item})


def _completed(state: FollowUps, envelope: Envelope) -> FollowUps:
    followup_id: str = envelope.payload["followup_id"]
    completion = Completion(envelope.occurred_at, envelope.payload.get("outcome"))
    item = state.items.get(followup_id)
    if item is None:
        if followup_id in state.held:
            return state
        return replace(state, held=state.held | {followup_id: completion})
    if item.done:
        return state
    done = replace(item, completed_at=completion.completed_at, outcome=completion.outcome)
    return replace(state, items=state.items | {followup_id: done})


# --- the work list and the overdue alert ------------------------------------------------------


def work_list(
    items: Iterable[FollowUp],
    now: datetime,
    *,
    assignee: str | None = None,
    due_before: datetime | None = None,
    status: Status | None = None,
) -> list[FollowUp]:
    """The items matching every filter given (GET /followups), earliest due first."""
    return sorted(
        (
            item
            for item in items
            if (assignee is None or item.assignee == assignee)
            and (due_before is None or item.due_at < due_before)
            and (status is None or status_at(item, now) == status)
        ),
        key=lambda item: (item.due_at, item.customer_id, item.followup_id),
    )


def overdue_key(item: FollowUp) -> str:
    """The alert's episode: the follow-up at its due time (a rescheduled one that falls overdue
    again is a new episode); follow-up ids may hold "|", times never do."""
    return f"{rfc3339(item.due_at)}|{item.followup_id}"


def followup_overdue(item: FollowUp, now: datetime) -> Alert | None:
    """The `followup.overdue` alert of an item open past its due time at `now`."""
    if status_at(item, now) != "overdue":
        return None
    details = {
        "followup_id": item.followup_id,
        "due_at": rfc3339(item.due_at),
        "reason": item.reason,
        "assignee": item.assignee,
    }
    return Alert.for_episode(
        FOLLOWUP_OVERDUE, item.customer_id, overdue_key(item), now, details, OVERDUE_ACTION
    )


def overdue_alerts(items: Iterable[FollowUp], now: datetime) -> list[Alert]:
    """One alert per item overdue at `now`, earliest due first (raised again: same ids)."""
    return [a for item in work_list(items, now) if (a := followup_overdue(item, now)) is not None]


def ended_between(before: FollowUps | None, after: FollowUps) -> list[str]:
    """The overdue alerts (raised or not) whose episode one event ended: the item was completed
    or rescheduled to another due time."""
    if before is None:
        return []
    ended = []
    for followup_id, item in before.items.items():
        later = after.items[followup_id]
        if not item.done and (later.done or overdue_key(later) != overdue_key(item)):
            ended.append(alert_id(FOLLOWUP_OVERDUE, after.customer_id, overdue_key(item)))
    return ended


# --- post-purchase follow-ups ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostPurchasePolicy:
    """A purchase whose total is above its currency's threshold gets a follow-up call `delay`
    after it occurred. Currencies without a threshold get none (money never converts)."""

    thresholds: Mapping[str, Decimal] = field(default_factory=lambda: {"EUR": Decimal(500)})
    delay: timedelta = timedelta(days=7)
    assignee: str | None = None
    source: str = "crm"


def followup_id_for(purchase_event_id: str) -> str:
    """The id of the follow-up a purchase schedules: the same for every delivery of it."""
    return f"post-purchase-{purchase_event_id.lower()}"


def followup_event_id(purchase_event_id: str) -> str:
    """The event id of the `followup.scheduled` a purchase causes: a UUID 5 of the purchase's
    event id, so the recorder drops a second scheduling by event id."""
    name = f"followup.scheduled|{purchase_event_id.lower()}"
    return str(uuid.uuid5(FOLLOWUP_NAMESPACE, name))


def post_purchase_followup(
    purchase: Envelope, policy: PostPurchasePolicy, now: datetime | None = None
) -> dict[str, Any] | None:
    """The payload of the `followup.scheduled` this purchase calls for, or None.

    With `now`, a follow-up that would already be due is not scheduled: it is a purchase of a
    history being loaded, not one to call about."""
    if purchase.type != "purchase.made":
        return None
    p = purchase.payload
    threshold = policy.thresholds.get(p["currency"])
    if threshold is None or Decimal(p["total"]) <= threshold:
        return None
    due_at = purchase.occurred_at + policy.delay
    if now is not None and due_at <= now:
        return None
    payload: dict[str, Any] = {
        "followup_id": followup_id_for(purchase.event_id),
        "due_at": rfc3339(due_at),
        "reason": f"Post-purchase call about order {p['order_id']} ({p['total']} {p['currency']})",
    }
    if policy.assignee is not None:
        payload["assignee"] = policy.assignee
    return payload


def post_purchase_envelope(
    purchase: Envelope, policy: PostPurchasePolicy, now: datetime | None = None
) -> dict[str, Any] | None:
    """The whole wire-form `followup.scheduled` for the intake, or None: it occurred with the
    purchase, and its correlation_id is the purchase's event id."""
    payload = post_purchase_followup(purchase, policy, now)
    if payload is None:
        return None
    return {
        "event_id": followup_event_id(purchase.event_id),
        "type": "followup.scheduled",
        "schema_version": 1,
        "customer_id": purchase.customer_id,
        "occurred_at": rfc3339(purchase.occurred_at),
        "source": policy.source,
        "payload": payload,
        "correlation_id": purchase.event_id,
    }


# --- JSON ---------------------------------------------------------------------------------------


def item_to_json(item: FollowUp) -> dict[str, Any]:
    return {
        "followup_id": item.followup_id,
        "due_at": rfc3339(item.due_at),
        "reason": item.reason,
        "assignee": item.assignee,
        "scheduled_at": rfc3339(item.scheduled_at),
        "completed_at": None if item.completed_at is None else rfc3339(item.completed_at),
        "outcome": item.outcome,
    }


def work_item(item: FollowUp, now: datetime) -> dict[str, Any]:
    """An item as GET /followups shows it: with its customer and status at `now`."""
    return {"customer_id": item.customer_id, **item_to_json(item), "status": status_at(item, now)}


def to_json(state: FollowUps) -> dict[str, Any]:
    """The JSON-ready document described in the module docstring."""
    return {
        "customer_id": state.customer_id,
        "version": state.version,
        "position": state.position,
        "items": {i: item_to_json(item) for i, item in sorted(state.items.items())},
        "held": {
            i: {"completed_at": rfc3339(c.completed_at), "outcome": c.outcome}
            for i, c in sorted(state.held.items())
        },
    }


def from_json(doc: dict[str, Any]) -> FollowUps:
    """The state stored by `to_json`, ready to continue folding."""
    customer_id = doc["customer_id"]
    items = {i: item_from_json(customer_id, d) for i, d in doc["items"].items()}
    held = {i: Completion(_time(c["completed_at"]), c["outcome"]) for i, c in doc["held"].items()}
    return FollowUps(customer_id, doc["version"], doc["position"], items, held)


def item_from_json(customer_id: str, doc: dict[str, Any]) -> FollowUp:
    """The item written by `item_to_json`."""
    return FollowUp(
        followup_id=doc["followup_id"],
        customer_id=customer_id,
        due_at=_time(doc["due_at"]),
        reason=doc["reason"],
        scheduled_at=_time(doc["scheduled_at"]),
        assignee=doc["assignee"],
        completed_at=None if doc["completed_at"] is None else _time(doc["completed_at"]),
        outcome=doc["outcome"],
    )


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def apply_own(state: FollowUps | None, event: RecordedEvent) -> FollowUps:
    """`apply` for a view handed only follow-up events (a sparse view): the versions an event
    skips are the customer's other events, which change no item."""
    if state is None:
        state = FollowUps(event.envelope.customer_id)
    if event.version > state.version + 1:
        state = replace(state, version=event.version - 1)
    return apply(state, event)


# --- one row per follow-up, for the work list across customers (GET /followups, the clock) -----

ITEMS_TABLE = "rm_followup_items"
CREATE_ITEMS_SQL = f"""
CREATE TABLE IF NOT EXISTS {ITEMS_TABLE} (
    customer_id text NOT NULL, followup_id text NOT NULL, assignee text,
    due_at timestamptz NOT NULL, scheduled_at timestamptz NOT NULL, completed_at timestamptz,
    doc jsonb NOT NULL, alerted_due_at timestamptz,
    PRIMARY KEY (customer_id, followup_id));
CREATE INDEX IF NOT EXISTS {ITEMS_TABLE}_due ON {ITEMS_TABLE} (due_at, customer_id, followup_id);
CREATE INDEX IF NOT EXISTS {ITEMS_TABLE}_assignee ON {ITEMS_TABLE} (assignee, due_at);
CREATE INDEX IF NOT EXISTS {ITEMS_TABLE}_open_due ON {ITEMS_TABLE} (due_at)
    WHERE completed_at IS NULL;
CREATE INDEX IF NOT EXISTS {ITEMS_TABLE}_unalerted ON {ITEMS_TABLE} (due_at)
    WHERE completed_at IS NULL AND alerted_due_at IS DISTINCT FROM due_at
"""
"""One row per follow-up: its indexed fields and its document (`item_to_json`). A held
completion (of an id not scheduled yet) has no row until its scheduling arrives.
`alerted_due_at` is the clock's bookkeeping (services/deadlines.py): the due time whose overdue
alert it logged; the projector never writes it (a replay starts it empty again, and the clock's
next pass logs nothing new: the alert of a due time always has the same id)."""
UPSERT_ITEMS_SQL = f"""
INSERT INTO {ITEMS_TABLE} AS t (customer_id, followup_id, assignee, due_at, scheduled_at,
    completed_at, doc)
SELECT c, f, a, d, s, done, doc::jsonb
FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],
    %s::timestamptz[], %s::text[]) AS u(c, f, a, d, s, done, doc)
ON CONFLICT (customer_id, followup_id) DO UPDATE SET assignee = excluded.assignee,
    due_at = excluded.due_at, scheduled_at = excluded.scheduled_at,
    completed_at = excluded.completed_at, doc = excluded.doc
"""
"""Takes one array per column of `item_rows`."""


def item_rows(before: FollowUps | None, after: FollowUps) -> list[tuple[Any, ...]]:
    """The rows of UPSERT_ITEMS_SQL for the items that changed from `before` to `after` (an item
    changes only by being replaced, so an unchanged one is the same object)."""
    old = {} if before is None else before.items
    return [
        (
            item.customer_id,
            item.followup_id,
            item.assignee,
            item.due_at,
            item.scheduled_at,
            item.completed_at,
            orjson.dumps(item_to_json(item)).decode(),
        )
        for followup_id, item in sorted(after.items.items())
        if old.get(followup_id) is not item
    ]


FOLLOWUP_TYPES = frozenset({"followup.scheduled", "followup.completed"})
FOLLOWUP_ITEMS: RowTable[FollowUps] = RowTable(
    "followup_items", CREATE_ITEMS_SQL, UPSERT_ITEMS_SQL, item_rows
)
FOLLOWUPS: CustomerView[FollowUps] = CustomerView(
    "followups",
    apply_own,
    to_json,
    from_json,
    None,
    ended_between,
    types=FOLLOWUP_TYPES,
    tables=(FOLLOWUP_ITEMS,),
)
"""The read model for the projector: table rm_followups (one row per customer who ever had a
follow-up event) and FOLLOWUP_ITEMS (one per follow-up); overdue alerts come from the clock."""
