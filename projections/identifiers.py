"""The identifier index (rm_identifiers): which customers a normalized phone number or e-mail
address belongs to, for the screen pop's lookup. Rows come from single events
(`projections.identity.identifiers_of`): `customer.registered`, `customer.updated`,
`call.logged`, `email.logged`; placeholders and values that do not normalize never enter.

One row per (kind, value, customer): `first_seen` and `last_seen` are the earliest and latest
`occurred_at` of the events that gave it, `source` the event type of the latest one (ties: the
type first in sort order). The upsert keeps least / greatest, so the rows do not depend on the
order events are applied in, nor on how often: a replay, a redelivery or two projectors give the
same rows. An identifier a customer stopped using stays (a customer may still call from an old
number); the lookup shows `last_seen` for each match.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from projections.identity import identifiers_of
from projections.merge_index import MAX_CHAIN, MERGES_TABLE
from projections.recorded import RecordedEvent
from projections.views import EventIndex

IDENTIFIERS_TABLE = "rm_identifiers"
IDENTIFIER_TYPES = frozenset(
    {"customer.registered", "customer.updated", "call.logged", "email.logged"}
)
CREATE_IDENTIFIERS_SQL = f"""
CREATE TABLE IF NOT EXISTS {IDENTIFIERS_TABLE} (
    kind text NOT NULL, value text NOT NULL, customer_id text NOT NULL, source text NOT NULL,
    first_seen timestamptz NOT NULL, last_seen timestamptz NOT NULL,
    PRIMARY KEY (kind, value, customer_id))
"""
"""The primary key is the lookup's index: (kind, value) is its prefix."""
UPSERT_IDENTIFIERS_SQL = f"""
INSERT INTO {IDENTIFIERS_TABLE} AS t (kind, value, customer_id, source, first_seen, last_seen)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],
    %s::timestamptz[])
ON CONFLICT (kind, value, customer_id) DO UPDATE SET
    first_seen = LEAST(t.first_seen, excluded.first_seen),
    last_seen = GREATEST(t.last_seen, excluded.last_seen),
    source = CASE WHEN excluded.last_seen > t.last_seen
        OR (excluded.last_seen = t.last_seen AND excluded.source < t.source)
        THEN excluded.source ELSE t.source END
"""
LOOKUP_SQL = f"""
WITH RECURSIVE hit AS (
    SELECT customer_id, source, first_seen, last_seen FROM {IDENTIFIERS_TABLE}
    WHERE kind = %s AND value = %s),
up(start, id, depth) AS (
    SELECT customer_id, customer_id, 0 FROM hit UNION ALL
    SELECT up.start, m.into_customer_id, up.depth + 1 FROM up JOIN {MERGES_TABLE} m
    ON m.customer_id = up.id WHERE up.depth < {MAX_CHAIN}),
survivor AS (SELECT DISTINCT ON (start) start, id FROM up ORDER BY start, depth DESC),
best AS (
    SELECT DISTINCT ON (s.id) s.id, h.customer_id AS seen_on, h.source, h.first_seen,
        h.last_seen
    FROM hit h JOIN survivor s ON s.start = h.customer_id
    ORDER BY s.id, h.last_seen DESC, h.customer_id)
SELECT b.id, c.doc->'profile'->>'name', b.seen_on, b.source, b.first_seen, b.last_seen
FROM best b LEFT JOIN rm_customer_360 c ON c.customer_id = b.id
ORDER BY b.last_seen DESC, b.id LIMIT %s
"""
"""The customers an identifier leads to: each match's survivor (merges followed, see
projections/merge_index.py), once, with the customer the identifier was seen on most recently
among those merged into it. Primary-key lookups."""

Key = tuple[str, str, str]


def identifier_rows(events: Sequence[RecordedEvent], region: str) -> list[tuple[Any, ...]]:
    """The upsert's rows for a batch: one per (kind, value, customer), merged as the upsert
    merges them (a statement may not touch a row twice), in key order (rows locked in one order
    by every projector)."""
    merged: dict[Key, tuple[str, datetime, datetime]] = {}
    for event in events:
        if event.envelope.type not in IDENTIFIER_TYPES:
            continue
        at = event.envelope.occurred_at
        for found in identifiers_of(event, region):
            key = (found.kind, found.value, event.envelope.customer_id)
            old = merged.get(key)
            if old is None:
                merged[key] = (found.source, at, at)
                continue
            source, first, last = old
            if at > last or (at == last and found.source < source):
                source = found.source
            merged[key] = (source, min(first, at), max(last, at))
    return [(*key, *merged[key]) for key in sorted(merged)]


def identifier_index(region: str) -> EventIndex:
    """The index for the projector, phones read in `region` when they carry no country code."""

    def rows(events: Sequence[RecordedEvent]) -> list[tuple[Any, ...]]:
        return identifier_rows(events, region)

    return EventIndex(
        "identifiers", CREATE_IDENTIFIERS_SQL, UPSERT_IDENTIFIERS_SQL, IDENTIFIER_TYPES, rows
    )
