"""The alert contract shared by every alert kind on crm.alerts.

`Alert.to_json` writes the message subscribers receive:

    {"alert_id": "5b0c…", "kind": "credit.limit.exceeded", "customer_id": "C-1",
     "raised_at": "2026-02-01T09:00:00Z",
     "details": {"outstanding": "5200.00", "limit": "5000", "currency": "EUR"},
     "suggested_action": "Put new orders on hold and call the customer about payment."}

`alert_id` is a function of (kind, customer_id, episode_key), so an alert raised again for the same
episode (a replay, a redelivery, a daily re-check) carries the same id and subscribers can drop or
update it. What an episode is belongs to each kind: the version of the event that started a credit
excess, an invoice id for an overdue invoice. `details` is JSON-ready: money as decimal strings,
dates as "YYYY-MM-DD". Constructors of a kind live with the view that detects it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from projections.recorded import rfc3339

ALERT_NAMESPACE = uuid.UUID("11ef527a-f56f-4707-a1f1-b8efd878d3d7")
"""Fixed forever: changing it would change the id of every alert ever raised."""

CREDIT_LIMIT_EXCEEDED = "credit.limit.exceeded"
INVOICE_OVERDUE = "invoice.overdue"
CUSTOMER_DESERTING = "customer.deserting"
CUSTOMER_DESERTING_RESOLVED = "customer.deserting.resolved"
COMPLAINT_SLA_BREACHED = "complaint.sla.breached"
PRODUCT_COMPLAINTS_SPIKE = "product.complaints.spike"
FOLLOWUP_OVERDUE = "followup.overdue"
COMPLAINT_KINDS = frozenset({COMPLAINT_SLA_BREACHED, PRODUCT_COMPLAINTS_SPIKE, FOLLOWUP_OVERDUE})
"""The kinds of complaints and follow-ups (projections.complaints, .complaint_signals, .followups),
raised by the projector's spike check and its clock (services/complaint_alerts.py)."""
KINDS = frozenset({CREDIT_LIMIT_EXCEEDED, INVOICE_OVERDUE, CUSTOMER_DESERTING,
                   CUSTOMER_DESERTING_RESOLVED}) | COMPLAINT_KINDS  # fmt: skip
"""Every kind the platform raises; the API checks kind filters against it."""
STATUSES = ("open", "acknowledged", "resolved")
"""An alert is `open` when logged, `acknowledged` once someone took it (POST /alerts/{id}/ack), and
`resolved` when its episode ended (e.g. the deserting customer's spend recovered)."""


def alert_id(kind: str, customer_id: str, episode_key: str) -> str:
    """The id of the alert of `kind` for this customer's episode: a UUID 5, the same every time.

    Kinds and customer ids never contain "|", so the name cannot be read two ways."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{kind}|{customer_id}|{episode_key}"))


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert; `raised_at` must be timezone-aware (it is written in UTC). `details` is never
    mutated after construction."""

    alert_id: str
    kind: str
    customer_id: str
    raised_at: datetime
    details: dict[str, Any] = field(default_factory=dict)
    suggested_action: str = ""

    def __post_init__(self) -> None:
        if self.raised_at.utcoffset() is None:
            raise ValueError(f"raised_at must be timezone-aware, got {self.raised_at!r}")

    @classmethod
    def for_episode(
        cls,
        kind: str,
        customer_id: str,
        episode_key: str,
        raised_at: datetime,
        details: dict[str, Any],
        suggested_action: str,
    ) -> Alert:
        """An alert whose id is derived from its kind, customer and episode."""
        ident = alert_id(kind, customer_id, episode_key)
        return cls(ident, kind, customer_id, raised_at, details, suggested_action)

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready message described in the module docstring."""
        return {
            "alert_id": self.alert_id,
            "kind": self.kind,
            "customer_id": self.customer_id,
            "raised_at": rfc3339(self.raised_at),
            "details": self.details,
            "suggested_action": self.suggested_action,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Alert:
        """The alert written by `to_json`."""
        return cls(
            alert_id=doc["alert_id"],
            kind=doc["kind"],
            customer_id=doc["customer_id"],
            raised_at=datetime.fromisoformat(doc["raised_at"]),
            details=dict(doc["details"]),
            suggested_action=doc["suggested_action"],
        )


# --- the alert log in PostgreSQL: outbox of crm.alerts and the history the API reads -----------

ALERTS_TABLE = "crm_alerts"
ALERTS_CHANNEL = "crm_alerts"
"""NOTIFY channel: a transaction that logged alerts wakes the relay."""

CREATE_ALERTS_SQL = (
    f"CREATE TABLE IF NOT EXISTS {ALERTS_TABLE} ("
    "seq bigserial PRIMARY KEY, alert_id text NOT NULL UNIQUE, kind text NOT NULL, "
    "customer_id text NOT NULL, raised_at timestamptz NOT NULL, alert jsonb NOT NULL, "
    "status text NOT NULL DEFAULT 'open', status_at timestamptz, acknowledged_by text); "
    f"ALTER TABLE {ALERTS_TABLE} ADD COLUMN IF NOT EXISTS acknowledged_by text; "
    f"CREATE INDEX IF NOT EXISTS {ALERTS_TABLE}_customer_seq ON {ALERTS_TABLE} (customer_id, seq)"
)
"""The alert log; also brings a log created before `acknowledged_by` up to date. The index serves
the alerts of one customer, newest first (GET /alerts?customer_id=)."""
LOCK_ALERTS_SQL = f"LOCK TABLE {ALERTS_TABLE} IN EXCLUSIVE MODE"
"""Writers take it first, so alerts commit in `seq` order and a reader after `seq` misses none."""

INSERT_ALERTS_SQL = (
    f"INSERT INTO {ALERTS_TABLE} (alert_id, kind, customer_id, raised_at, alert) "
    "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::jsonb[]) "
    "ON CONFLICT (alert_id) DO NOTHING"
)
"""An alert already logged (same episode) is kept as it was: raised once. Binary parameters:
psycopg escapes every quote of a JSON document in a text array with a regular expression."""

RESOLVE_ALERTS_SQL = (
    f"UPDATE {ALERTS_TABLE} SET status = 'resolved', status_at = %s "
    "WHERE alert_id = ANY(%s::text[]) AND status <> 'resolved'"
)
"""Close the alerts of episodes that ended (open or acknowledged alike)."""

SELECT_ALERTS_AFTER_SQL = (
    f"SELECT seq, customer_id, alert FROM {ALERTS_TABLE} WHERE seq > %s ORDER BY seq LIMIT %s"
)


def insert_params(alerts: list[Alert]) -> tuple[list[Any], ...]:
    """The parameters of INSERT_ALERTS_SQL for `alerts`, but the documents JSON-ready (the
    writer wraps them for PostgreSQL)."""
    return (
        [a.alert_id for a in alerts],
        [a.kind for a in alerts],
        [a.customer_id for a in alerts],
        [a.raised_at for a in alerts],
        [a.to_json() for a in alerts],
    )


# --- reading and acknowledging the alert log (GET /alerts, /alerts/stream, POST …/ack) --------

ALERT_FIELDS = ("alert_id", "kind", "customer_id", "raised_at", "details", "suggested_action")
"""The keys of `Alert.to_json`, in their documented order (JSONB does not keep key order)."""

LOGGED_COLUMNS = "seq, alert::text, status, status_at, acknowledged_by"
"""The columns `logged_alert` renders, in its parameter order."""

TAIL_SQL = f"SELECT coalesce(max(seq), 0) FROM {ALERTS_TABLE}"
"""The last seq committed: writers hold LOCK_ALERTS_SQL, so any later alert gets a higher one."""

SELECT_FOR_ACK_SQL = f"SELECT {LOGGED_COLUMNS} FROM {ALERTS_TABLE} WHERE alert_id = %s FOR UPDATE"
ACK_SQL = (
    f"UPDATE {ALERTS_TABLE} SET status = 'acknowledged', status_at = now(), acknowledged_by = %s "
    f"WHERE alert_id = %s RETURNING {LOGGED_COLUMNS}"
)


class AlertNotFound(LookupError):
    def __init__(self, alert_id: str) -> None:
        super().__init__(f"alert {alert_id} is unknown")


class AlertAlreadyResolved(ValueError):
    def __init__(self, alert_id: str) -> None:
        super().__init__(
            f"alert {alert_id} is resolved: its episode is over, there is nothing to acknowledge"
        )


def needs_ack(alert_id: str, status: str) -> bool:
    """Whether acknowledging an alert in `status` changes it: an open alert is acknowledged, one
    already acknowledged stays as it was (with its first time and person), a resolved one cannot
    be acknowledged (AlertAlreadyResolved)."""
    if status == "resolved":
        raise AlertAlreadyResolved(alert_id)
    return status == "open"


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which logged alerts to read; None or empty matches everything."""

    kinds: tuple[str, ...] = ()
    customer_id: str | None = None
    status: str | None = None

    def conditions(self) -> tuple[list[str], list[Any]]:
        """SQL conditions (joined with AND) and their parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.kinds:
            clauses.append("kind = ANY(%s::text[])")
            params.append(list(self.kinds))
        if self.customer_id is not None:
            clauses.append("customer_id = %s")
            params.append(self.customer_id)
        if self.status is not None:
            clauses.append("status = %s")
            params.append(self.status)
        return clauses, params


def select_newest_sql(where: AlertFilter, before: int | None, limit: int) -> tuple[str, list[Any]]:
    """Query of up to `limit` alerts matching `where` with seq below `before`, newest first;
    its rows are `LOGGED_COLUMNS`."""
    clauses, params = where.conditions()
    if before is not None:
        clauses.append("seq < %s")
        params.append(before)
    query = (
        f"SELECT {LOGGED_COLUMNS} FROM {ALERTS_TABLE}{_where(clauses)} ORDER BY seq DESC LIMIT %s"
    )
    return query, [*params, limit]


def select_after_sql(where: AlertFilter, after: int, limit: int) -> tuple[str, list[Any]]:
    """Query of up to `limit` alerts matching `where` with seq above `after`, oldest first; its
    rows are (seq, kind, alert text)."""
    clauses, params = where.conditions()
    clauses.append("seq > %s")
    params.append(after)
    query = (
        f"SELECT seq, kind, alert::text FROM {ALERTS_TABLE}{_where(clauses)} ORDER BY seq LIMIT %s"
    )
    return query, [*params, limit]


def _where(clauses: list[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def ordered_alert(alert_text: str) -> dict[str, Any]:
    """An alert document of the log with its keys in the documented order (unknown keys last)."""
    doc: dict[str, Any] = orjson.loads(alert_text)
    return {**{key: doc[key] for key in ALERT_FIELDS if key in doc}, **doc}


def logged_alert(
    seq: int,
    alert_text: str,
    status: str,
    status_at: datetime | None,
    acknowledged_by: str | None,
) -> dict[str, Any]:
    """An alert of the log as the API shows it: the alert, then where it is in the log and its
    status (`status_at`: when it last changed; null while open)."""
    return {
        **ordered_alert(alert_text),
        "seq": seq,
        "status": status,
        "status_at": None if status_at is None else rfc3339(status_at),
        "acknowledged_by": acknowledged_by,
    }
