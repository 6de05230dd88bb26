"""Webhook subscriptions: register an endpoint for some alert kinds (POST /subscriptions), list,
read and delete them, and read the deliveries of each with every attempt
(GET /subscriptions/{id}/deliveries). services/webhooks.py does the delivering.

The tables are created on first use if no service has created them yet.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID, uuid4

from fastapi import APIRouter, HTTPException, Query, Response, status
from psycopg import AsyncConnection
from psycopg.errors import UndefinedTable
from psycopg_pool import AsyncConnectionPool
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, field_validator

from api.deps import ReadPool
from api.routes.customers import Problem
from infra.webhooks import (
    CANCEL_DELIVERIES_SQL,
    DELETE_SUBSCRIPTION_SQL,
    SELECT_ATTEMPTS_SQL,
    SELECT_DELIVERIES_SQL,
    SELECT_SUBSCRIPTION_SQL,
    SELECT_SUBSCRIPTIONS_SQL,
    SUBSCRIPTION_COLUMNS,
    SUBSCRIPTIONS_TABLE,
    create_tables_async,
)
from projections.alerts import ALERTS_TABLE, CREATE_ALERTS_SQL, KINDS

MIN_SECRET = 16
MAX_SECRET = 256
MAX_PAGE = 500

_INSERT_SQL = (
    f"INSERT INTO {SUBSCRIPTIONS_TABLE} (id, url, kinds, secret, after_seq) "
    f"SELECT %s, %s, %s, %s, coalesce(max(seq), 0) FROM {ALERTS_TABLE} "
    f"RETURNING {SUBSCRIPTION_COLUMNS}"
)
"""A subscription receives the alerts logged after it: writers of the alert log hold a table lock,
so every alert committed later has a higher seq than the last one committed now."""

router = APIRouter(prefix="/subscriptions", tags=["webhooks"])

T = TypeVar("T")
DeliveryStatus = Literal["pending", "delivered", "failed", "cancelled"]
"""infra.webhooks.DELIVERY_STATUSES, for validation and OpenAPI."""
UtcDatetime = Annotated[datetime, AfterValidator(lambda moment: moment.astimezone(UTC))]
"""Rendered in UTC ("…Z") whatever the database session's time zone."""


class NewSubscription(BaseModel):
    """An endpoint to POST alerts to, the kinds it wants, and the secret that signs them."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="http or https", examples=["https://example.com/crm-alerts"])
    kinds: list[str] = Field(
        default_factory=list,
        description=f"alert kinds to receive; empty or missing: all ({', '.join(sorted(KINDS))})",
        examples=[["credit.limit.exceeded", "invoice.overdue"]],
    )
    secret: str = Field(
        min_length=MIN_SECRET,
        max_length=MAX_SECRET,
        description="HMAC-SHA256 key of X-CRM-Signature; never shown again",
    )

    @field_validator("kinds")
    @classmethod
    def known_kinds(cls, kinds: list[str]) -> list[str]:
        unknown = sorted(set(kinds) - KINDS)
        if unknown:
            raise ValueError(
                f"unknown alert kind {unknown[0]!r}; known kinds: {', '.join(sorted(KINDS))}"
            )
        return sorted(set(kinds))


class Subscription(BaseModel):
    """A registered endpoint (its secret is never shown)."""

    id: UUID
    url: str
    kinds: list[str] = Field(description="empty: every kind")
    created_at: UtcDatetime


class DeliveryAttempt(BaseModel):
    attempt: int = Field(description="1, 2, ... within the delivery")
    at: UtcDatetime = Field(description="when the request was sent")
    status_code: int | None = Field(description="null: no response (network error, timeout)")
    error: str | None = Field(description="the network error or timeout; null with a response")
    duration_ms: int


class Delivery(BaseModel):
    """One alert for one subscription, with every attempt to deliver it."""

    id: UUID = Field(description="sent as X-CRM-Delivery-Id: the same on every retry")
    alert_id: str
    alert_seq: int = Field(description="the alert's position in the alert log")
    kind: str
    status: DeliveryStatus = Field(
        description="pending (being retried), delivered, failed (final status, or retries "
        "exhausted) or cancelled (the subscription was deleted)"
    )
    next_attempt_at: UtcDatetime | None = Field(description="when pending: the next attempt")
    last_error: str | None
    created_at: UtcDatetime
    finished_at: UtcDatetime | None
    attempts: list[DeliveryAttempt] = Field(description="oldest first")


class Deliveries(BaseModel):
    """A subscription's deliveries, newest first."""

    subscription_id: UUID
    deliveries: list[Delivery]


ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "Unknown or deleted subscription"},
    422: {"description": "Invalid body or parameter (a `detail` list of validation errors)"},
    503: {"model": Problem, "description": "Database unavailable; retry shortly"},
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Register a webhook",
    responses={422: ERRORS[422], 503: ERRORS[503]},
)
async def create_subscription(new: NewSubscription, pool: ReadPool) -> Subscription:
    """Every alert of `kinds` logged from now on is POSTed to `url`, signed with `secret`."""

    async def insert(conn: AsyncConnection[Any]) -> Any:
        params = (uuid4(), str(new.url), new.kinds, new.secret)
        return await (await conn.execute(_INSERT_SQL, params)).fetchone()

    return Subscription(**_subscription(await _write(pool, insert)))


@router.get("", summary="Webhooks", responses={503: ERRORS[503]})
async def list_subscriptions(pool: ReadPool) -> list[Subscription]:
    """The active subscriptions, oldest first."""
    rows = await _fetch_all(pool, SELECT_SUBSCRIPTIONS_SQL)
    return [Subscription(**_subscription(row)) for row in rows]


@router.get("/{subscription_id}", summary="A webhook", responses=ERRORS)
async def get_subscription(subscription_id: UUID, pool: ReadPool) -> Subscription:
    row = await _find(pool, subscription_id)
    if row[-1] is not None:
        raise _not_found(subscription_id)
    return Subscription(**_subscription(row[:-1]))


@router.delete(
    "/{subscription_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a webhook",
    responses=ERRORS,
)
async def delete_subscription(subscription_id: UUID, pool: ReadPool) -> Response:
    """No alert is sent to it any more: its pending deliveries are cancelled. Their history
    stays readable at GET /subscriptions/{id}/deliveries."""

    async def delete(conn: AsyncConnection[Any]) -> Any:
        deleted = await (await conn.execute(DELETE_SUBSCRIPTION_SQL, (subscription_id,))).fetchone()
        if deleted is not None:
            await conn.execute(CANCEL_DELIVERIES_SQL, (subscription_id,))
        return deleted

    if await _write(pool, delete) is None:
        raise _not_found(subscription_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{subscription_id}/deliveries", summary="Deliveries of a webhook", responses=ERRORS)
async def list_deliveries(
    subscription_id: UUID,
    pool: ReadPool,
    status_: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> Deliveries:
    """The newest `limit` deliveries (of one status if given), each with its attempts; also
    for a deleted subscription."""
    await _find(pool, subscription_id)
    params = (subscription_id, status_, status_, limit)
    rows = await _fetch_all(pool, SELECT_DELIVERIES_SQL, params)
    attempts: dict[UUID, list[DeliveryAttempt]] = defaultdict(list)
    delivery_ids = [row[0] for row in rows]
    for delivery_id, *attempt in await _fetch_all(pool, SELECT_ATTEMPTS_SQL, (delivery_ids,)):
        fields = dict(zip(_ATTEMPT_FIELDS, attempt, strict=True))
        attempts[delivery_id].append(DeliveryAttempt(**fields))
    return Deliveries(
        subscription_id=subscription_id,
        deliveries=[_delivery(row, attempts[row[0]]) for row in rows],
    )


_ATTEMPT_FIELDS = ("attempt", "at", "status_code", "error", "duration_ms")
_DELIVERY_FIELDS = ("id", "alert_id", "alert_seq", "kind", "status", "next_attempt_at",
                    "last_error", "created_at", "finished_at")  # fmt: skip


def _delivery(row: Any, attempts: list[DeliveryAttempt]) -> Delivery:
    fields = dict(zip(_DELIVERY_FIELDS, row, strict=True))
    if fields["status"] != "pending":
        fields["next_attempt_at"] = None
    return Delivery(**fields, attempts=attempts)


def _subscription(row: Any) -> dict[str, Any]:
    return dict(zip(("id", "url", "kinds", "created_at"), row, strict=True))


async def _find(pool: AsyncConnectionPool[Any], subscription_id: UUID) -> Any:
    """The subscription's row (its last column: deleted_at); 404 when unknown."""
    rows = await _fetch_all(pool, SELECT_SUBSCRIPTION_SQL, (subscription_id,))
    if not rows:
        raise _not_found(subscription_id)
    return rows[0]


def _not_found(subscription_id: UUID) -> HTTPException:
    detail = f"subscription {subscription_id} is unknown or was deleted"
    return HTTPException(status.HTTP_404_NOT_FOUND, detail)


async def _fetch_all(pool: AsyncConnectionPool[Any], query: str, params: Any = None) -> list[Any]:
    """The rows of a read; none before the webhook tables exist."""
    try:
        async with pool.connection() as conn:
            return await (await conn.execute(query, params)).fetchall()
    except UndefinedTable:
        return []


async def _write(
    pool: AsyncConnectionPool[Any], change: Callable[[AsyncConnection[Any]], Awaitable[T]]
) -> T:
    """Run `change` in a transaction, creating the tables first if they are missing."""
    try:
        async with pool.connection() as conn, conn.transaction():
            return await change(conn)
    except UndefinedTable:
        async with pool.connection() as conn, conn.transaction():
            await create_tables_async(conn)
            await conn.execute(CREATE_ALERTS_SQL)
            return await change(conn)
