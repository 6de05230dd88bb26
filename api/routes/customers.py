"""GET /customers/{customer_id}: the customer 360 from its read models, and
GET /customers/{customer_id}/timeline: the customer's recorded events, newest first.

The 360 is assembled in api/customer_document.py: the models below document its shape in
OpenAPI, they do not check it on every request. A customer merged away answers 308 with the
survivor's address (its timeline stays readable: the events are its own).
"""

from __future__ import annotations

import heapq
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.responses import JSONResponse
from psycopg.errors import UndefinedTable
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.customer_document import MergedAway, customer_document, merge_links
from api.deps import ReadPool, Store
from events.envelope import CUSTOMER_ID_PATTERN
from infra.eventstore import EventStore
from projections.recorded import from_store, rfc3339

MAX_PAGE = 500

_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)

router = APIRouter(prefix="/customers", tags=["customers"])

Money = Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$", examples=["1234.50"])]


class Profile(BaseModel):
    """The latest known contact details; null until an event gave them."""

    name: str | None
    email: str | None
    phone: str | None
    address: str | None


class TouchpointCounts(BaseModel):
    total: int
    by_type: dict[str, int] = Field(description="number of events by event type")
    first_at: datetime | None
    last_at: datetime | None


class Purchases(BaseModel):
    count: int
    total_spent: dict[str, Money] = Field(
        description="purchases minus refunds, a decimal string by ISO 4217 currency"
    )
    last_purchase_at: datetime | None
    by_month: dict[str, dict[str, Money]] = Field(
        description="net spend by currency, then by UTC month 'YYYY-MM'; a missing month is 0"
    )


class Complaints(BaseModel):
    open: int
    total: int


class OpenComplaint(BaseModel):
    """An open complaint case (see GET /complaints/{customer_id}/{complaint_id})."""

    complaint_id: str
    customer_id: str = Field(description="whose case: this customer or one merged into it")
    category: str
    severity: Literal["low", "medium", "high"]
    due_at: datetime = Field(description="its SLA deadline (the current episode's)")
    breached: bool = Field(description="open at or past `due_at` at the time of the request")


class RecentTouchpoint(BaseModel):
    event_id: str
    type: str
    occurred_at: datetime
    summary: str = Field(description="one line for a person to read")
    version: int = Field(description="within the events of the customer it happened to")
    customer_id: str | None = Field(
        None, description="only on the items of a customer merged into this one: that customer"
    )


class BalanceSummary(BaseModel):
    """What the customer owes today, per currency, and their credit (null without terms)."""

    outstanding: dict[str, Money] = Field(description="invoiced - paid - refunded; < 0: credit")
    overdue: dict[str, Money] = Field(description="outstanding on invoices past their due date")
    credit_limit: Money | None
    available_credit: Money | None = Field(description="credit limit - outstanding")
    currency: str | None = Field(description="currency of the credit limit")


class ChurnRisk(BaseModel):
    """The last desertion verdict (see the README's desertion rule) and the customer's episodes."""

    state: Literal["deserting", "steady", "low_spend", "too_new"]
    currency: str | None = Field(description="the main currency the customer is judged in")
    baseline_monthly: Money = Field(description="average monthly net spend, baseline months")
    recent_monthly: Money = Field(description="average monthly net spend, recent months")
    drop_ratio: str | None = Field(description="recent / baseline; null when baseline is 0")
    months: dict[str, Money] = Field(description="the judged months, oldest first")
    deserting: bool = Field(description="an episode is open (a customer.deserting alert)")
    episodes: int = Field(description="how many desertion episodes began")
    since: datetime | None = Field(description="when the last episode began or ended")
    judged_at: datetime


class GoesWellWith(BaseModel):
    sku: str
    name: str | None = Field(description="a name the SKU was sold under")
    score: float = Field(description="lift: N·n(A,B) / (n(A)·n(B)), > 1")
    together: int = Field(description="orders holding both")
    because: str = Field(description="the SKU the customer has that it goes with")


class LikelyNext(BaseModel):
    sku: str
    name: str | None
    interval_days: int = Field(description="median days between the days it was bought")
    last_on: date
    expected_at: date = Field(description="last_on + interval_days")
    due: bool = Field(description="expected within 30 days of today, or past")


class Offers(BaseModel):
    goes_well_with: list[GoesWellWith] = Field(description="best lift first, at most 5")
    likely_next: list[LikelyNext] = Field(description="due first, then by expected date")


class NetSpend(BaseModel):
    currency: str
    amount: Money


class ProductInterest(BaseModel):
    sku: str
    weight: float = Field(description="views decayed with a half-life of 14 days")
    views: int
    last_viewed_at: datetime


class CategoryInterest(BaseModel):
    category: str
    weight: float
    views: int
    last_viewed_at: datetime


class Interests(BaseModel):
    products: list[ProductInterest]
    categories: list[CategoryInterest]


class Segments(BaseModel):
    tier: Literal["platinum", "gold", "silver", "bronze"] | None = Field(
        description="by trailing 12-month net spend among the customers of its currency; null "
        "without any spend or before the cut points are computed"
    )
    net_spend_12m: NetSpend | None
    tier_cuts_at: datetime | None = Field(description="when the cut points were computed")
    interests: Interests


class Customer360(BaseModel):
    """The customer 360 ("screen pop") after the customer's events up to `version` (its
    global `position` in the event store)."""

    customer_id: str
    version: int
    position: int
    profile: Profile
    touchpoints: TouchpointCounts
    purchases: Purchases
    complaints: Complaints
    open_complaints: list[OpenComplaint] = Field(description="earliest deadline first")
    satisfaction: Literal["happy", "neutral", "unhappy"] = Field(
        description="unhappy: a complaint open past its deadline, or the latest verdict is not "
        "satisfied; happy: nothing open and the latest verdict is satisfied; else neutral"
    )
    recent: list[RecentTouchpoint] = Field(description="the latest touchpoints, newest first")
    merged_customer_ids: list[str] = Field(
        description="the customers merged into this one (directly or through a chain): their "
        "history is counted in this document"
    )
    balance: BalanceSummary = Field(description="see GET /customers/{customer_id}/balance")
    churn_risk: ChurnRisk | None = Field(description="null until the customer is first judged")
    offers: Offers = Field(description="what to offer (see the README's screen pop)")
    segments: Segments


class TimelineEvent(BaseModel):
    """A recorded event, its payload at the current schema version of its type."""

    customer_id: str = Field(description="whose: the customer, or one merged into it")
    position: int = Field(description="global position in the event store")
    version: int = Field(description="1, 2, 3... within that customer's events")
    event_id: str
    type: str
    schema_version: int
    occurred_at: datetime
    source: str
    payload: dict[str, Any]
    correlation_id: str | None


class Timeline(BaseModel):
    """One page of a customer's recorded events and those of the customers merged into it,
    newest first."""

    customer_id: str
    events: list[TimelineEvent]
    next_before: int | None = Field(
        description="pass as `before` for the next page; null when there is no more"
    )


class Problem(BaseModel):
    detail: str


class MergedInto(Problem):
    merged_into: str = Field(description="the surviving customer")


CustomerId = Annotated[
    str,
    Path(
        description="1-64 characters of A-Z a-z 0-9 _ . : -",
        json_schema_extra={"pattern": CUSTOMER_ID_PATTERN},
        examples=["C-0042"],
    ),
]
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "Unknown customer, or not in the view yet"},
    422: {
        "description": "Malformed customer id (a `detail` message) or query parameter "
        "(a `detail` list of validation errors)"
    },
    503: {"model": Problem, "description": "Database unavailable; retry shortly"},
}


@router.get(
    "/{customer_id}",
    response_class=JSONResponse,
    summary="Customer 360",
    responses={
        200: {"model": Customer360, "description": "The 360 document"},
        308: {"model": MergedInto, "description": "Merged away: `Location` is the survivor's"},
        **ERRORS,
    },
)
async def get_customer(customer_id: CustomerId, pool: ReadPool, store: Store) -> Response:
    """The customer 360 as the projector last wrote it, with its open complaints (breached as of
    now), the satisfaction indicator, the balance as of today (UTC), the last desertion
    verdict (null until the customer is first judged), what to offer and the segments; with the
    history of the customers merged into it."""
    check_customer_id(customer_id)
    document = await customer_document(pool, customer_id, datetime.now(UTC))
    if isinstance(document, MergedAway):
        return merged_away(customer_id, document.survivor, "")
    if document is None:
        raise await not_found(store, customer_id)
    return Response(orjson.dumps(document), media_type="application/json")


def merged_away(customer_id: str, survivor: str, path: str) -> Response:
    """308 to the survivor's resource, with a body that says so (for clients that do not
    follow redirects)."""
    location = f"/customers/{survivor}{path}"
    body = {
        "detail": f"customer {customer_id} was merged into {survivor}; see {location}",
        "merged_into": survivor,
    }
    return JSONResponse(body, status.HTTP_308_PERMANENT_REDIRECT, headers={"Location": location})


async def fetch_row(pool: AsyncConnectionPool[Any], query: str, customer_id: str) -> Any:
    """The one row of a read model for a customer, or None (also before the projector has
    created its tables with its first batch)."""
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(query, (customer_id,))
            return await cursor.fetchone()
    except UndefinedTable:
        return None


async def not_found(store: EventStore, customer_id: str) -> HTTPException:
    """404 for a customer not in a view: unknown, or recorded and not projected yet."""
    recorded = await run_in_threadpool(_is_recorded, store, customer_id)
    detail = (
        f"customer {customer_id} is recorded but not yet in the view; retry shortly"
        if recorded
        else _unknown(customer_id)
    )
    return HTTPException(status.HTTP_404_NOT_FOUND, detail)


@router.get(
    "/{customer_id}/timeline",
    response_class=JSONResponse,
    summary="Customer timeline",
    responses={200: {"model": Timeline, "description": "A page of events"}, **ERRORS},
)
async def get_timeline(
    customer_id: CustomerId,
    pool: ReadPool,
    store: Store,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    before: Annotated[
        int | None, Query(ge=1, description="only events at positions below this one")
    ] = None,
) -> Response:
    """The customer's recorded events from the event store, with those of the customers merged
    into it, newest (highest position) first, `limit` per page."""
    check_customer_id(customer_id)
    _, merged = await merge_links(pool, customer_id)
    streams = [customer_id, *merged]
    rows = await run_in_threadpool(_timeline_rows, store, streams, limit + 1, before)
    if not rows and (
        before is None or not await run_in_threadpool(_is_recorded, store, customer_id)
    ):
        raise HTTPException(status.HTTP_404_NOT_FOUND, _unknown(customer_id))
    page = rows[:limit]
    body = {
        "customer_id": customer_id,
        "events": [_timeline_event(*row) for row in page],
        "next_before": page[-1][2] if len(rows) > limit else None,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _timeline_rows(
    store: EventStore, customer_ids: list[str], limit: int, before: int | None
) -> list[tuple[str, int, int, bytes]]:
    """(customer_id, version, position, state) of the customers' events below `before`, the
    `limit` highest positions: a page of each stream, merged."""
    pages = (
        [(c, *row) for row in store.timeline(c, limit=limit, before=before)] for c in customer_ids
    )
    return list(heapq.merge(*pages, key=lambda row: row[2], reverse=True))[:limit]


def check_customer_id(customer_id: str) -> None:
    if not _CUSTOMER_ID.fullmatch(customer_id):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"customer_id must be 1-64 characters of A-Z a-z 0-9 _ . : -, got {customer_id!r}",
        )


def _unknown(customer_id: str) -> str:
    return f"customer {customer_id} is unknown"


def _is_recorded(store: EventStore, customer_id: str) -> bool:
    return bool(store.stream_versions({customer_id}))


def _timeline_event(customer_id: str, version: int, position: int, state: bytes) -> dict[str, Any]:
    envelope = from_store(state, position=position, version=version).envelope
    return {
        "customer_id": customer_id,
        "position": position,
        "version": version,
        "event_id": envelope.event_id,
        "type": envelope.type,
        "schema_version": envelope.schema_version,
        "occurred_at": rfc3339(envelope.occurred_at),
        "source": envelope.source,
        "payload": envelope.payload,
        "correlation_id": envelope.correlation_id,
    }
