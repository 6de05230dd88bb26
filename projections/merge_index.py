"""The merge index (rm_merges): which customers were merged into which, for the read side.

One row per accepted `customer.merged` event (the recorder refuses the others, see
projections/merges.py): the customer merged away, the customer it was merged into, when, and
the event. The upsert keeps the first row of a customer (there is only one accepted merge per
customer), so a replay, a redelivery or two projectors give the same rows.

Merges are resolved when read, not when written: every read model keeps folding each
customer's own events under its own id (events recorded later for a merged id included), and
the API combines the rows of a survivor and of every customer merged into it, directly or
through a chain (`LINKS_CTE`). Writes stay partition-local (a customer's events are on one
partition, a survivor's may be on another), and a rebuild from the event store gives the same
result because nothing depends on the order the merges and the other events were applied in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projections.merges import CUSTOMER_MERGED
from projections.recorded import RecordedEvent
from projections.views import EventIndex

MERGES_TABLE = "rm_merges"
MAX_CHAIN = 32
"""How many merges a chain may hold when read (the recorder keeps chains free of cycles; this
bounds a read anyway)."""

CREATE_MERGES_SQL = f"""
CREATE TABLE IF NOT EXISTS {MERGES_TABLE} (
    customer_id text PRIMARY KEY, into_customer_id text NOT NULL, merged_at timestamptz NOT NULL,
    event_id text NOT NULL, position bigint NOT NULL);
CREATE INDEX IF NOT EXISTS {MERGES_TABLE}_into ON {MERGES_TABLE} (into_customer_id)
"""
UPSERT_MERGES_SQL = f"""
INSERT INTO {MERGES_TABLE} (customer_id, into_customer_id, merged_at, event_id, position)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::bigint[])
ON CONFLICT (customer_id) DO NOTHING
"""

LINKS_CTE = (
    "WITH RECURSIVE up(id, depth) AS (SELECT %(customer_id)s::text, 0 UNION ALL "
    f"SELECT m.into_customer_id, up.depth + 1 FROM up JOIN {MERGES_TABLE} m "
    f"ON m.customer_id = up.id WHERE up.depth < {MAX_CHAIN}), "
    "down(id, depth) AS (SELECT %(customer_id)s::text, 0 UNION ALL "
    f"SELECT m.customer_id, down.depth + 1 FROM down JOIN {MERGES_TABLE} m "
    f"ON m.into_customer_id = down.id WHERE down.depth < {MAX_CHAIN}) "
)
"""The two walks of the index from `customer_id`, for a query to follow: `up` to its survivor,
`down` to itself and every customer merged into it, directly or through a chain."""
SURVIVOR = "(SELECT id FROM up ORDER BY depth DESC LIMIT 1)"
"""After LINKS_CTE: the survivor (the customer itself when never merged away)."""
LINKS_SQL = LINKS_CTE + f"SELECT {SURVIVOR}, ARRAY(SELECT id FROM down WHERE depth > 0 ORDER BY id)"
"""The survivor and the customers merged into it (sorted)."""


def merge_rows(events: Sequence[RecordedEvent]) -> list[tuple[Any, ...]]:
    """The upsert's rows for a batch's `customer.merged` events, one per customer (the first),
    in key order."""
    rows: dict[str, tuple[Any, ...]] = {}
    for event in events:
        envelope = event.envelope
        if envelope.type == CUSTOMER_MERGED and envelope.customer_id not in rows:
            rows[envelope.customer_id] = (
                envelope.customer_id,
                envelope.payload["into_customer_id"],
                envelope.occurred_at,
                envelope.event_id,
                event.position,
            )
    return [rows[c] for c in sorted(rows)]


MERGE_INDEX = EventIndex(
    "merges", CREATE_MERGES_SQL, UPSERT_MERGES_SQL, frozenset({CUSTOMER_MERGED}), merge_rows
)
"""The index for the projector (and `crm replay merges`)."""
