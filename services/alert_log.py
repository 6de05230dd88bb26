"""Writing alerts to the alert log (crm_alerts), the outbox of crm.alerts and the history the API
reads: every detector logs through here, in the transaction of the change that raised them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from projections.alerts import (
    ALERTS_CHANNEL,
    INSERT_ALERTS_SQL,
    LOCK_ALERTS_SQL,
    RESOLVE_ALERTS_SQL,
    Alert,
    insert_params,
)


async def log_alerts(conn: AsyncConnection[Any], alerts: list[Alert]) -> int:
    """Log alerts in the caller's transaction (an episode already logged is kept) and wake the
    relay, which publishes them to crm.alerts once the transaction commits; returns how many
    were logged for the first time."""
    if not alerts:
        return 0
    await conn.execute(LOCK_ALERTS_SQL)
    *columns, docs = insert_params(alerts)
    documents = [Jsonb(doc, dumps=orjson.dumps) for doc in docs]
    cursor = await conn.execute(INSERT_ALERTS_SQL, (*columns, documents))
    await conn.execute(f"NOTIFY {ALERTS_CHANNEL}")
    return cursor.rowcount


async def resolve_alerts(conn: AsyncConnection[Any], alert_ids: list[str], at: datetime) -> None:
    """Mark the alerts of episodes that ended as resolved, in the caller's transaction."""
    if alert_ids:
        await conn.execute(RESOLVE_ALERTS_SQL, (at, alert_ids))
