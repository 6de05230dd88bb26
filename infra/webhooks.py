"""Webhook tables: subscriptions, deliveries (one per alert and subscription) and the log of
every attempt, plus the dispatcher's position in the alert log.

- `crm_subscriptions`: a deleted subscription keeps its row (`deleted_at` set, secret erased) so
  the history of its deliveries stays readable; it gets no new deliveries.
- `crm_deliveries`: `pending` until `delivered`, `failed` (a final status, or retries
  exhausted: kept, never dropped) or `cancelled` (its subscription was deleted). Unique per
  (subscription, alert): an alert read twice is delivered once. `next_attempt_at` of a pending
  delivery is when it is due; while an attempt is in flight it is the end of the attempt's lease.
- `crm_delivery_attempts`: one row per attempt, written with the delivery's new status.
- `crm_webhook_progress`: the last `crm_alerts.seq` turned into deliveries, advanced in the
  transaction that creates them.

The statements that read `crm_alerts` live with their callers (services/webhooks.py,
api/routes/subscriptions.py): the alert log belongs to projections/, which infra does not import.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, Connection

from infra.eventstore import SCHEMA_LOCK

SUBSCRIPTIONS_TABLE = "crm_subscriptions"
DELIVERIES_TABLE = "crm_deliveries"
ATTEMPTS_TABLE = "crm_delivery_attempts"
PROGRESS_TABLE = "crm_webhook_progress"
DISPATCHER = "dispatcher"
"""Name of the dispatcher's row in the progress table."""

PENDING, DELIVERED, FAILED, CANCELLED = "pending", "delivered", "failed", "cancelled"
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED, CANCELLED)

SCHEMA_SQL = (
    f"CREATE TABLE IF NOT EXISTS {SUBSCRIPTIONS_TABLE} ("
    "id uuid PRIMARY KEY, url text NOT NULL, kinds text[] NOT NULL, secret text NOT NULL, "
    "after_seq bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), "
    "deleted_at timestamptz)",
    f"CREATE TABLE IF NOT EXISTS {DELIVERIES_TABLE} ("
    "id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
    f"subscription_id uuid NOT NULL REFERENCES {SUBSCRIPTIONS_TABLE} (id), "
    "alert_seq bigint NOT NULL, alert_id text NOT NULL, kind text NOT NULL, "
    "status text NOT NULL DEFAULT 'pending' "
    f"CHECK (status IN ({', '.join(repr(s) for s in DELIVERY_STATUSES)})), "
    "attempts integer NOT NULL DEFAULT 0, next_attempt_at timestamptz NOT NULL, "
    "last_error text, created_at timestamptz NOT NULL, finished_at timestamptz, "
    "UNIQUE (subscription_id, alert_id))",
    f"CREATE INDEX IF NOT EXISTS {DELIVERIES_TABLE}_due ON {DELIVERIES_TABLE} "
    "(subscription_id, next_attempt_at) WHERE status = 'pending'",
    f"CREATE INDEX IF NOT EXISTS {DELIVERIES_TABLE}_newest ON {DELIVERIES_TABLE} "
    "(subscription_id, created_at DESC, alert_seq DESC)",
    f"CREATE TABLE IF NOT EXISTS {ATTEMPTS_TABLE} ("
    f"delivery_id uuid NOT NULL REFERENCES {DELIVERIES_TABLE} (id), attempt integer NOT NULL, "
    "at timestamptz NOT NULL, status_code integer, error text, duration_ms integer NOT NULL, "
    "PRIMARY KEY (delivery_id, attempt))",
    f"CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (name text PRIMARY KEY, seq bigint NOT NULL)",
    f"INSERT INTO {PROGRESS_TABLE} VALUES ('{DISPATCHER}', 0) ON CONFLICT (name) DO NOTHING",
)
_LOCK_SQL = "SELECT pg_advisory_xact_lock(%s)"


def create_tables(conn: Connection[Any]) -> None:
    """Create the webhook tables if missing, in the caller's transaction, under the schema lock
    (services starting together do not race)."""
    conn.execute(_LOCK_SQL, (SCHEMA_LOCK,))
    for statement in SCHEMA_SQL:
        conn.execute(statement)


async def create_tables_async(conn: AsyncConnection[Any]) -> None:
    """`create_tables` on an async connection."""
    await conn.execute(_LOCK_SQL, (SCHEMA_LOCK,))
    for statement in SCHEMA_SQL:
        await conn.execute(statement)


# --- subscriptions (the API) ----------------------------------------------------------------

SUBSCRIPTION_COLUMNS = "id, url, kinds, created_at"
SELECT_SUBSCRIPTIONS_SQL = (
    f"SELECT {SUBSCRIPTION_COLUMNS} FROM {SUBSCRIPTIONS_TABLE} "
    "WHERE deleted_at IS NULL ORDER BY created_at, id"
)
SELECT_SUBSCRIPTION_SQL = (
    f"SELECT {SUBSCRIPTION_COLUMNS}, deleted_at FROM {SUBSCRIPTIONS_TABLE} WHERE id = %s"
)
DELETE_SUBSCRIPTION_SQL = (
    f"UPDATE {SUBSCRIPTIONS_TABLE} SET deleted_at = now(), secret = '' "
    "WHERE id = %s AND deleted_at IS NULL RETURNING id"
)
"""Run before CANCEL_DELIVERIES_SQL in one transaction: the dispatcher's fan-out locks active
subscriptions FOR SHARE, so this waits for it and the cancel then sees what it created."""
CANCEL_DELIVERIES_SQL = (
    f"UPDATE {DELIVERIES_TABLE} SET status = '{CANCELLED}', finished_at = now() "
    f"WHERE subscription_id = %s AND status = '{PENDING}'"
)
SELECT_DELIVERIES_SQL = (
    "SELECT id, alert_id, alert_seq, kind, status, next_attempt_at, last_error, created_at, "
    f"finished_at FROM {DELIVERIES_TABLE} WHERE subscription_id = %s "
    "AND (%s::text IS NULL OR status = %s) ORDER BY created_at DESC, alert_seq DESC LIMIT %s"
)
SELECT_ATTEMPTS_SQL = (
    f"SELECT delivery_id, attempt, at, status_code, error, duration_ms FROM {ATTEMPTS_TABLE} "
    "WHERE delivery_id = ANY(%s) ORDER BY delivery_id, attempt"
)

# --- the dispatcher ---------------------------------------------------------------------------

ACTIVE_SUBSCRIPTION_IDS_SQL = f"SELECT id FROM {SUBSCRIPTIONS_TABLE} WHERE deleted_at IS NULL"
SELECT_PROGRESS_SQL = f"SELECT seq FROM {PROGRESS_TABLE} WHERE name = '{DISPATCHER}' FOR UPDATE"
ADVANCE_PROGRESS_SQL = f"UPDATE {PROGRESS_TABLE} SET seq = %s WHERE name = '{DISPATCHER}'"
INSERT_ATTEMPT_SQL = (
    f"INSERT INTO {ATTEMPTS_TABLE} (delivery_id, attempt, at, status_code, error, duration_ms) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (delivery_id, attempt) DO NOTHING"
)
FINISH_ATTEMPT_SQL = (
    f"UPDATE {DELIVERIES_TABLE} SET attempts = %(attempts)s, status = %(status)s, "
    "next_attempt_at = coalesce(%(next_attempt_at)s, next_attempt_at), last_error = %(error)s, "
    f"finished_at = CASE WHEN %(status)s = '{PENDING}' THEN NULL ELSE %(now)s END "
    f"WHERE id = %(id)s AND status = '{PENDING}' AND attempts = %(attempts_before)s"
)
"""The delivery's state after an attempt; a delivery cancelled meanwhile stays cancelled, and
the result of an attempt that outlived its lease (another took over) changes nothing."""
