"""The intake outbox: touchpoints the platform emits itself (a follow-up call scheduled after a
large purchase), written in the transaction of the change that decided them and published by the
relay to crm.touchpoints, where the recorder records them like any other touchpoint.

Exactly once: the caller derives each event_id from what caused the event, so a redelivered or
replayed cause enqueues nothing twice (event_id is unique here), and what the relay publishes
again (after a crash, or to a broker restarted empty) the recorder drops by event_id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from events.codec import encode
from events.envelope import Envelope

OUTBOX_TABLE = "crm_intake_outbox"
OUTBOX_CHANNEL = "crm_intake_outbox"
"""NOTIFY channel: a transaction that enqueued touchpoints wakes the relay."""

CREATE_OUTBOX_SQL = (
    f"CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} ("
    "seq bigserial PRIMARY KEY, event_id uuid NOT NULL UNIQUE, customer_id text NOT NULL, "
    "envelope bytea NOT NULL, enqueued_at timestamptz NOT NULL DEFAULT now())"
)
_LOCK_SQL = f"LOCK TABLE {OUTBOX_TABLE} IN SHARE ROW EXCLUSIVE MODE"
"""Writers one at a time, so seq grows in commit order and the relay never passes a row that
commits later with a lower seq."""
_INSERT_SQL = (
    f"INSERT INTO {OUTBOX_TABLE} (event_id, customer_id, envelope) "
    "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::bytea[]) ON CONFLICT (event_id) DO NOTHING"
)
SELECT_AFTER_SQL = (
    f"SELECT seq, customer_id, envelope FROM {OUTBOX_TABLE} WHERE seq > %s ORDER BY seq LIMIT %s"
)


async def enqueue(conn: AsyncConnection[Any], envelopes: Sequence[Envelope]) -> int:
    """Enqueue touchpoints in the caller's transaction (an event_id already enqueued is kept);
    returns how many were new."""
    if not envelopes:
        return 0
    await conn.execute(_LOCK_SQL)
    cursor = await conn.execute(
        _INSERT_SQL,
        (
            [e.event_id for e in envelopes],
            [e.customer_id for e in envelopes],
            [encode(e) for e in envelopes],
        ),
    )
    await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return cursor.rowcount
