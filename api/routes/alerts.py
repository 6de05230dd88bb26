"""The alert log (crm_alerts) over HTTP:

- GET /alerts: alerts newest first, filtered by kind, customer and status, `before` for paging;
- POST /alerts/{alert_id}/ack: someone took the alert;
- GET /alerts/stream: Server-Sent Events of new alerts, resumable with `Last-Event-ID`.

Every alert carries its `seq` in the log; a stream sends it as the SSE `id`, so a client that
reconnects with the last id it saw gets exactly the alerts logged after it, in log order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from psycopg import OperationalError
from psycopg.errors import UndefinedTable
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from api.deps import Feed, ReadPool
from api.routes.customers import Problem, check_customer_id
from api.routes.params import fetch_all
from projections.alerts import (
    ACK_SQL,
    KINDS,
    SELECT_FOR_ACK_SQL,
    STATUSES,
    TAIL_SQL,
    AlertAlreadyResolved,
    AlertFilter,
    AlertNotFound,
    logged_alert,
    needs_ack,
    ordered_alert,
    select_after_sql,
    select_newest_sql,
)

log = logging.getLogger("crm.api.alerts")

MAX_PAGE = 500
STREAM_BATCH = 500
"""Alerts a stream reads from the log at a time."""
POLL_S = 5.0
"""A stream re-reads the log at least this often, even without a wake-up from the feed."""
READ_RETRY_S = 0.5
"""Pause of a stream after a failed read of the log."""
RETRY_MS = 2000
"""How long browsers wait before reconnecting a dropped stream."""

router = APIRouter(prefix="/alerts", tags=["alerts"])


class LoggedAlert(BaseModel):
    """An alert (the message of crm.alerts) and its place and status in the alert log."""

    alert_id: str = Field(description="the same for every raising of the same episode")
    kind: str = Field(examples=["credit.limit.exceeded"])
    customer_id: str
    raised_at: datetime
    details: dict[str, Any] = Field(description="by kind; money as decimal strings")
    suggested_action: str
    seq: int = Field(description="position in the alert log; the SSE id of the stream")
    status: str = Field(description="open, acknowledged or resolved")
    status_at: datetime | None = Field(description="when the status last changed; null if open")
    acknowledged_by: str | None = Field(description="the `by` of the acknowledgement")


class AlertPage(BaseModel):
    """One page of alerts, newest first."""

    alerts: list[LoggedAlert]
    next_before: int | None = Field(
        description="pass as `before` for the next page; null when there is no more"
    )


class Acknowledgement(BaseModel):
    by: str | None = Field(
        default=None, max_length=200, description="who took the alert", examples=["ana@sales"]
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "Unknown kind or status, malformed customer id (a `detail` message) or "
        "malformed parameter (a `detail` list of validation errors)"
    },
    503: {"model": Problem, "description": "Database unavailable; retry shortly"},
}


async def kinds_param(
    kind: Annotated[
        list[str] | None,
        Query(
            description="only alerts of this kind; repeat for several", examples=["invoice.overdue"]
        ),
    ] = None,
) -> tuple[str, ...]:
    unknown = sorted(set(kind or ()) - KINDS)
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"kind must be one of {', '.join(sorted(KINDS))}; got {unknown[0]!r}",
        )
    return tuple(kind or ())


Kinds = Annotated[tuple[str, ...], Depends(kinds_param)]


def check_status(value: str | None) -> None:
    if value is not None and value not in STATUSES:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"status must be one of {', '.join(STATUSES)}; got {value!r}",
        )


@router.get(
    "",
    response_class=JSONResponse,
    summary="Alerts",
    responses={200: {"model": AlertPage, "description": "A page of alerts"}, **ERRORS},
)
async def list_alerts(
    pool: ReadPool,
    kinds: Kinds,
    customer_id: Annotated[str | None, Query(description="only this customer's alerts")] = None,
    status_: Annotated[
        str | None,
        Query(alias="status", json_schema_extra={"enum": list(STATUSES)}),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    before: Annotated[int | None, Query(ge=1, description="only alerts with a lower seq")] = None,
) -> Response:
    """Logged alerts, newest first, `limit` per page; an empty page when none match."""
    if customer_id is not None:
        check_customer_id(customer_id)
    check_status(status_)
    where = AlertFilter(kinds, customer_id, status_)
    rows = await fetch_all(pool, *select_newest_sql(where, before, limit + 1))
    page = rows[:limit]
    body = {
        "alerts": [logged_alert(*row) for row in page],
        "next_before": page[-1][0] if len(rows) > limit else None,
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.post(
    "/{alert_id}/ack",
    response_class=JSONResponse,
    summary="Acknowledge an alert",
    responses={
        200: {"model": LoggedAlert, "description": "The alert, acknowledged"},
        404: {"model": Problem, "description": "Unknown alert"},
        409: {"model": Problem, "description": "The alert is resolved"},
        **ERRORS,
    },
)
async def acknowledge(
    alert_id: str, pool: ReadPool, body: Acknowledgement | None = None
) -> Response:
    """Mark an open alert `acknowledged` (now, by `by`). Acknowledging it again changes
    nothing and answers 200 with the first acknowledgement; a resolved alert answers 409."""
    try:
        row = await _acknowledge(pool, alert_id, body.by if body else None)
    except AlertNotFound as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except AlertAlreadyResolved as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    return Response(orjson.dumps(logged_alert(*row)), media_type="application/json")


async def stream_start(
    pool: ReadPool,
    last_event_id: Annotated[
        int | None,
        Header(alias="Last-Event-ID", ge=0, description="the id of the last event received"),
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, description="as Last-Event-ID, for clients that cannot set it")
    ] = None,
) -> int:
    """The seq after which the stream starts: Last-Event-ID, else `after`, else the tail of the
    log now (read before the response starts, so nothing logged after connecting is missed)."""
    if last_event_id is not None:
        return last_event_id
    if after is not None:
        return after
    rows = await fetch_all(pool, TAIL_SQL, [])
    return int(rows[0][0]) if rows else 0


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    summary="Stream of new alerts (Server-Sent Events)",
    responses=ERRORS,
)
async def stream_alerts(
    pool: ReadPool,
    feed: Feed,
    kinds: Kinds,
    start: Annotated[int, Depends(stream_start)],
) -> AsyncIterator[ServerSentEvent]:
    """Alerts logged after the start point, oldest first, one SSE event each: `id` its seq,
    `event` its kind, `data` the alert JSON. The first message has only `id` (the start point)
    and `retry`: browsers dispatch no event for it, but reconnect from it."""
    where = AlertFilter(kinds)
    yield ServerSentEvent(id=str(start), retry=RETRY_MS)
    last = start
    while True:
        change = feed.next_change()
        rows = await _read_after(pool, where, last)
        if rows is None:
            await asyncio.sleep(READ_RETRY_S)
            continue
        for seq, kind, text in rows:
            data = orjson.dumps(ordered_alert(text)).decode()
            yield ServerSentEvent(id=str(seq), event=kind, raw_data=data)
            last = seq
        if len(rows) < STREAM_BATCH:
            await feed.wait(change, POLL_S)


async def _read_after(
    pool: AsyncConnectionPool[Any], where: AlertFilter, after: int
) -> list[Any] | None:
    """The next alerts of a stream; None while the database is unavailable (the stream stays
    open and reads again shortly: after a restart, the pool's stale connections fail once)."""
    try:
        return await fetch_all(pool, *select_after_sql(where, after, STREAM_BATCH))
    except OperationalError as error:
        log.warning("event=alert_stream_read_failed after=%d error=%r", after, str(error))
        return None


async def _acknowledge(pool: AsyncConnectionPool[Any], alert_id: str, by: str | None) -> Any:
    """The row of the alert after acknowledging it (see `needs_ack`)."""
    try:
        async with pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(SELECT_FOR_ACK_SQL, (alert_id,))
            row = await cursor.fetchone()
            if row is None:
                raise AlertNotFound(alert_id)
            if needs_ack(alert_id, row[2]):
                cursor = await conn.execute(ACK_SQL, (by, alert_id))
                row = await cursor.fetchone()
            return row
    except UndefinedTable:
        raise AlertNotFound(alert_id) from None
