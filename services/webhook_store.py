"""The webhook dispatcher's side of PostgreSQL: creating deliveries from the alert log, claiming
the due ones with a lease, and recording each attempt with the delivery's new state.

The tables are in infra/webhooks.py; the statements here also read the alert log (crm_alerts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from infra.webhooks import (
    ACTIVE_SUBSCRIPTION_IDS_SQL,
    ADVANCE_PROGRESS_SQL,
    DELIVERIES_TABLE,
    FINISH_ATTEMPT_SQL,
    INSERT_ATTEMPT_SQL,
    PENDING,
    SELECT_PROGRESS_SQL,
    SUBSCRIPTIONS_TABLE,
    create_tables_async,
)
from projections.alerts import ALERTS_TABLE, CREATE_ALERTS_SQL
from services.webhook_policy import Decision

log = logging.getLogger("crm.webhooks")

BATCH = 1000
"""Alerts fanned out per transaction."""

_BATCH_END_SQL = (
    f"SELECT max(seq) FROM (SELECT seq FROM {ALERTS_TABLE} WHERE seq > %s ORDER BY seq LIMIT %s) b"
)
_FAN_OUT_SQL = (
    f"INSERT INTO {DELIVERIES_TABLE} "
    "(subscription_id, alert_seq, alert_id, kind, next_attempt_at, created_at) "
    f"SELECT s.id, a.seq, a.alert_id, a.kind, %(now)s, %(now)s FROM {ALERTS_TABLE} a JOIN "
    f"(SELECT id, kinds, after_seq FROM {SUBSCRIPTIONS_TABLE} WHERE deleted_at IS NULL "
    "FOR SHARE) s ON a.seq > s.after_seq AND (cardinality(s.kinds) = 0 OR a.kind = ANY(s.kinds)) "
    "WHERE a.seq > %(after)s AND a.seq <= %(upto)s "
    "ON CONFLICT (subscription_id, alert_id) DO NOTHING RETURNING subscription_id"
)
"""Deliveries of the alerts in (after, upto] to the active subscriptions of their kind. FOR SHARE:
a concurrent DELETE /subscriptions waits, then cancels what this created."""
_CLAIM_SQL = (
    f"WITH due AS (SELECT id FROM {DELIVERIES_TABLE} WHERE subscription_id = %(subscription)s "
    f"AND status = '{PENDING}' AND next_attempt_at <= %(now)s "
    "ORDER BY next_attempt_at, alert_seq LIMIT 1 FOR UPDATE SKIP LOCKED), "
    f"claimed AS (UPDATE {DELIVERIES_TABLE} d SET next_attempt_at = %(lease_until)s FROM due "
    "WHERE d.id = due.id RETURNING d.id, d.attempts, d.created_at, d.alert_id, d.alert_seq, "
    "d.subscription_id) "
    "SELECT c.id, c.attempts + 1, c.created_at, c.alert_id, s.url, s.secret, "
    f"s.deleted_at IS NULL, a.alert FROM claimed c JOIN {SUBSCRIPTIONS_TABLE} s "
    f"ON s.id = c.subscription_id LEFT JOIN {ALERTS_TABLE} a ON a.seq = c.alert_seq"
)
_NEXT_DUE_SQL = (
    f"SELECT min(next_attempt_at) FROM {DELIVERIES_TABLE} "
    f"WHERE subscription_id = %s AND status = '{PENDING}'"
)


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed delivery: attempt number `attempt` of sending `alert` to `url`."""

    delivery_id: UUID
    attempt: int
    created_at: datetime
    alert_id: str
    url: str
    secret: str
    active: bool
    """False when the subscription was deleted after the claim: nothing is sent."""
    alert: dict[str, Any] | None
    """The alert log's document; None when the alert is no longer in the log."""


class Attempt(NamedTuple):
    """One attempt as logged, in the order of its table's columns."""

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryStore:
    """The webhook tables, through an autocommit async pool."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def create_tables(self) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await create_tables_async(conn)
            await conn.execute(CREATE_ALERTS_SQL)

    async def active_subscriptions(self) -> set[UUID]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(ACTIVE_SUBSCRIPTION_IDS_SQL)
            return {row[0] for row in await cursor.fetchall()}

    async def fan_out(self, now: datetime) -> set[UUID] | None:
        """Create the deliveries of the next batch of alerts; the subscriptions that got some,
        or None when every logged alert has been fanned out."""
        async with self.pool.connection() as conn, conn.transaction():
            (after,) = await _one(conn, SELECT_PROGRESS_SQL)
            (upto,) = await _one(conn, _BATCH_END_SQL, (after, BATCH))
            if upto is None:
                return None
            params = {"now": now, "after": after, "upto": upto}
            cursor = await conn.execute(_FAN_OUT_SQL, params)
            subscriptions = {row[0] for row in await cursor.fetchall()}
            await conn.execute(ADVANCE_PROGRESS_SQL, (upto,))
        log.info("event=fanned_out after_seq=%d upto_seq=%d deliveries=%d",
                 after, upto, cursor.rowcount)  # fmt: skip
        return subscriptions

    async def claim(self, subscription: UUID, now: datetime, lease_until: datetime) -> Job | None:
        """The subscription's next due delivery, leased until `lease_until`; None if none."""
        params = {"subscription": subscription, "now": now, "lease_until": lease_until}
        async with self.pool.connection() as conn:
            row = await (await conn.execute(_CLAIM_SQL, params)).fetchone()
        return None if row is None else Job(*row)

    async def next_due(self, subscription: UUID) -> datetime | None:
        async with self.pool.connection() as conn:
            (due,) = await _one(conn, _NEXT_DUE_SQL, (subscription,))
        return due

    async def finish(
        self, job: Job, attempt: Attempt | None, decision: Decision, now: datetime
    ) -> None:
        """Log the attempt (if one was made) and the delivery's new state, in one transaction."""
        async with self.pool.connection() as conn, conn.transaction():
            if attempt is not None:
                await conn.execute(INSERT_ATTEMPT_SQL, (job.delivery_id, job.attempt, *attempt))
            await conn.execute(
                FINISH_ATTEMPT_SQL,
                {
                    "id": job.delivery_id,
                    "attempts": job.attempt if attempt is not None else job.attempt - 1,
                    "attempts_before": job.attempt - 1,
                    "status": decision.status.value,
                    "next_attempt_at": decision.next_attempt_at,
                    "error": decision.error,
                    "now": now,
                },
            )


async def _one(conn: AsyncConnection[Any], query: str, params: Any = None) -> tuple[Any, ...]:
    row = await (await conn.execute(query, params)).fetchone()
    assert row is not None, query
    return tuple(row)
