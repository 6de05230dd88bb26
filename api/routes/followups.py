"""GET /followups: the follow-up work list across customers, from its rows (rm_followup_items).

A follow-up is `done` once completed, `overdue` while open after its due time (at the due time
itself it is still `open`), otherwise `open`: the status is worked out at the time of the
request, so an item turns overdue as time passes, without any event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import ReadPool
from api.routes.customers import Problem, check_customer_id
from api.routes.params import MAX_PAGE, choice, decode_cursor, encode_cursor, fetch_all, moment
from projections.followups import ITEMS_TABLE, item_from_json, work_item

router = APIRouter(prefix="/followups", tags=["followups"])

STATUSES = ("open", "done", "overdue")
_STATUS_SQL = {
    "done": "completed_at IS NOT NULL",
    "open": "completed_at IS NULL AND due_at >= %(now)s",
    "overdue": "completed_at IS NULL AND due_at < %(now)s",
}


class WorkItem(BaseModel):
    """A follow-up; `scheduled_at` is when it was (last) scheduled."""

    customer_id: str
    followup_id: str
    due_at: datetime
    reason: str
    assignee: str | None
    scheduled_at: datetime
    completed_at: datetime | None
    outcome: str | None
    status: Literal["open", "done", "overdue"] = Field(description="at the time of the request")


class WorkList(BaseModel):
    followups: list[WorkItem] = Field(description="earliest due first")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null when there is no more"
    )


@router.get(
    "",
    response_class=JSONResponse,
    summary="Follow-up work list",
    responses={
        200: {"model": WorkList, "description": "A page of the work list"},
        422: {"description": "A parameter out of its range or format (a `detail` message)"},
        503: {"model": Problem, "description": "Database unavailable; retry shortly"},
    },
)
async def list_followups(
    pool: ReadPool,
    assignee: Annotated[str | None, Query(max_length=200)] = None,
    due_before: Annotated[
        str | None,
        Query(
            description="only items due before this time (RFC 3339, or a date: its midnight UTC)",
            examples=["2026-11-24T00:00:00Z"],
        ),
    ] = None,
    status_: Annotated[
        str | None, Query(alias="status", json_schema_extra={"enum": list(STATUSES)})
    ] = None,
    customer_id: Annotated[str | None, Query(description="only this customer's items")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="the `next_cursor` of a page")] = None,
) -> Response:
    """The follow-ups matching every filter given, earliest due first, `limit` per page."""
    choice("status", status_, STATUSES)
    before = moment("due_before", due_before)
    if customer_id is not None:
        check_customer_id(customer_id)
    after = decode_cursor(cursor)
    now = datetime.now(UTC)
    clauses, params = ["true"], {"now": now, "limit": limit + 1}
    if assignee is not None:
        clauses.append("assignee = %(assignee)s")
        params["assignee"] = assignee
    if customer_id is not None:
        clauses.append("customer_id = %(customer_id)s")
        params["customer_id"] = customer_id
    if before is not None:
        clauses.append("due_at < %(before)s")
        params["before"] = before
    if status_ is not None:
        clauses.append(_STATUS_SQL[status_])
    if after is not None:
        clauses.append("(due_at, customer_id, followup_id) > (%(at)s, %(c)s, %(f)s)")
        params |= {"at": after[0], "c": after[1], "f": after[2]}
    query = (
        f"SELECT customer_id, doc FROM {ITEMS_TABLE} WHERE {' AND '.join(clauses)} "
        "ORDER BY due_at, customer_id, followup_id LIMIT %(limit)s"
    )
    rows = await fetch_all(pool, query, params)
    items = [item_from_json(c, doc) for c, doc in rows[:limit]]
    last = items[-1] if items else None
    body: dict[str, Any] = {
        "followups": [work_item(item, now) for item in items],
        "next_cursor": (
            encode_cursor(last.due_at, last.customer_id, last.followup_id)
            if last is not None and len(rows) > limit
            else None
        ),
    }
    return Response(orjson.dumps(body), media_type="application/json")
