"""The document of GET /customers/{customer_id} (and of a lookup's one match): the customer 360
read from its read models in one query, merges resolved at read time.

The query walks the merge index (projections/merge_index.py) from the customer: up to its
survivor, and down to every customer merged into it. A customer merged away has no document of
its own: the caller points to the survivor. A survivor's document combines its rows with those
of the customers merged into it (the 360, the balance, complaint cases, offers); the desertion
verdict stays the survivor's own (the detector judges each customer id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg.errors import UndefinedTable
from psycopg_pool import AsyncConnectionPool

from projections import customer_360, offer_view
from projections.balance import BALANCE, Balance, combined_summary, summary
from projections.balance import from_json as balance_from_json
from projections.complaints import CASES_TABLE
from projections.customer_360 import CUSTOMER_360, public_document
from projections.desertion import DESERTION_TABLE, churn_risk
from projections.merge_index import LINKS_CTE, LINKS_SQL, SURVIVOR
from projections.offer_view import (
    CUTS_JSON_SQL,
    OFFERS,
    PAIRS_SQL,
    offers_of,
    owned_skus,
    pairs_params,
)
from projections.offer_view import from_json as offer_from_json

_NO_LINKS = "WITH down(id) AS (SELECT %(customer_id)s::text) "
_BASE_SQL = (
    "{links}SELECT {survivor}, c.customer_id, c.doc::text, b.doc::text, d.verdict::text, "
    "d.episodes, d.open, d.since, d.judged_at{cases}{offers} "
    f"FROM {CUSTOMER_360.table} c LEFT JOIN {BALANCE.table} b USING (customer_id) "
    f"LEFT JOIN {DESERTION_TABLE} d USING (customer_id){{offers_join}} "
    "WHERE c.customer_id IN (SELECT id FROM down) "
    "ORDER BY c.customer_id = %(customer_id)s DESC, c.customer_id"
)
_COMPLAINTS_SQL = (
    ", (SELECT json_agg(json_build_object('complaint_id', k.complaint_id, "
    "'customer_id', k.customer_id, 'category', k.category, 'severity', k.severity, "
    "'due_at', k.doc->'due_at', 'breached', k.due_at <= %(now)s) "
    'ORDER BY k.due_at, k.customer_id COLLATE "C", k.complaint_id COLLATE "C")::text '
    f"FROM {CASES_TABLE} k WHERE k.customer_id IN (SELECT id FROM down) AND k.status = 'open'), "
    f"(SELECT k.satisfied FROM {CASES_TABLE} k WHERE k.customer_id IN (SELECT id FROM down) "
    "AND k.status = 'resolved' AND k.satisfied IS NOT NULL "
    'ORDER BY k.resolved_at DESC, k.customer_id COLLATE "C" DESC, '
    'k.complaint_id COLLATE "C" DESC LIMIT 1)'
)
"""The open cases of the customer and of those merged into it, earliest deadline first,
`breached` as of the request, and the latest verdict (`satisfied` of the latest resolution of a
case resolved now): lookups on the case rows' primary key, the same on every row."""
_OFFERS_SQL = f", o.doc::text, {CUTS_JSON_SQL}::text"
_OFFERS_JOIN = f" LEFT JOIN {OFFERS.table} o USING (customer_id)"
"""The customer's offers view and every currency's tier cut points (a row per currency)."""
_DOCUMENT_QUERIES = tuple(
    _BASE_SQL.format(
        links=links, survivor=survivor, cases=cases, offers=offers_sql, offers_join=join
    )
    for links, survivor, cases, offers_sql, join in (
        (LINKS_CTE, SURVIVOR, _COMPLAINTS_SQL, _OFFERS_SQL, _OFFERS_JOIN),
        (_NO_LINKS, "%(customer_id)s", _COMPLAINTS_SQL, ", NULL, NULL", ""),
        (_NO_LINKS, "%(customer_id)s", ", NULL, NULL", ", NULL, NULL", ""),
    )
)
"""The 360's query (the customer's row first), then the same without the tables a projector
may not have created yet (an older database, a replay in progress): the merge index and the
offers tables, then also the complaint cases."""


@dataclass(frozen=True, slots=True)
class MergedAway:
    """The customer was merged into `survivor` (at the end of its chain of merges)."""

    survivor: str


async def customer_document(
    pool: AsyncConnectionPool[Any], customer_id: str, now: datetime
) -> dict[str, Any] | MergedAway | None:
    """The 360 document, MergedAway for a customer merged away, None when not in the view: one
    query, and one more for the co-purchases of what the customer has."""
    rows = await _fetch_rows(pool, customer_id, now)
    if rows and rows[0][0] != customer_id:
        return MergedAway(rows[0][0])
    if not rows or rows[0][1] != customer_id:
        return None  # only customers merged into it are in the view yet
    own, merged = rows[0], rows[1:]
    open_cases = orjson.loads(own[9]) if own[9] else []
    document = public_document(_combined_360(rows), open_cases, own[10])
    document["merged_customer_ids"] = [row[1] for row in merged]
    balances = [balance_from_json(orjson.loads(r[3])) if r[3] else Balance(r[1]) for r in rows]
    summaries = [summary(balance, now.date()) for balance in balances]
    document["balance"] = combined_summary(summaries) if merged else summaries[0]
    verdict, *episodes = own[4:9]
    document["churn_risk"] = churn_risk(orjson.loads(verdict), *episodes) if verdict else None
    states = [offer_from_json(orjson.loads(r[11])) for r in rows if r[11]]
    state = offer_view.combine(states[0], states[1:]) if states else None
    pairs = await _pairs(pool, owned_skus(state))
    document["offers"] = offers_of(state, pairs, now)
    cuts = orjson.loads(own[12]) if own[12] else None
    document["segments"] = offer_view.segments_of(state, cuts, now)
    return document


def _combined_360(rows: list[Any]) -> dict[str, Any]:
    """The stored 360 document of the first row, combined with the others' when there are."""
    docs = [orjson.loads(row[2]) for row in rows]
    if len(docs) == 1:
        return docs[0]
    views = [customer_360.from_json(doc) for doc in docs]
    return customer_360.to_json(customer_360.combine(views[0], views[1:]))


async def merge_links(pool: AsyncConnectionPool[Any], customer_id: str) -> tuple[str, list[str]]:
    """The survivor of `customer_id` (itself when never merged away) and the customers merged
    into it (sorted); (itself, []) before the projector created the merge index."""
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(LINKS_SQL, {"customer_id": customer_id})
            row = await cursor.fetchone()
    except UndefinedTable:
        return customer_id, []
    return (customer_id, []) if row is None else (row[0], row[1])


async def _pairs(pool: AsyncConnectionPool[Any], skus: list[str]) -> list[Any]:
    """The co-purchase rows `goes_well_with` picks for these SKUs (none without SKUs)."""
    if not skus:
        return []
    async with pool.connection() as conn:
        cursor = await conn.execute(PAIRS_SQL, pairs_params(skus))
        return await cursor.fetchall()


async def _fetch_rows(pool: AsyncConnectionPool[Any], customer_id: str, now: datetime) -> Any:
    """The rows of the customer and of those merged into it (its own first); fewer parts while
    their tables do not exist (a database the projector has not upgraded yet, a replay)."""
    params = {"customer_id": customer_id, "now": now}
    async with pool.connection() as conn:
        for query in _DOCUMENT_QUERIES:
            try:
                cursor = await conn.execute(query, params)
            except UndefinedTable:
                continue
            return await cursor.fetchall()
    return []
