"""Complaint cases across customers, from their rows (rm_complaint_cases):

- GET /complaints: the cases matching the filters, newest filed first, a page at a time;
- GET /complaints/{customer_id}/{complaint_id}: one case with its full history;
- GET /complaints/{complaint_id}: the same when one customer has a case of that id (409 naming the
  customers when several have one).

Complaint ids are unique per customer only (each department numbers its own), so a case is named
by both. `breached` is worked out at the time of the request: a case is breached while it is open
at or past its deadline (`due_at`), so it turns true as time passes, without any event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import ReadPool
from api.routes.customers import CustomerId, Problem, check_customer_id
from api.routes.params import MAX_PAGE, choice, decode_cursor, encode_cursor, fetch_all
from projections.complaints import CASES_TABLE, case_from_json, case_report

router = APIRouter(prefix="/complaints", tags=["complaints"])

STATUSES = ("open", "resolved")
SEVERITIES = ("low", "medium", "high")
SUMMARY_FIELDS = (
    "customer_id", "complaint_id", "category", "product_sku", "severity", "description", "status",
    "assignee", "episode", "filed_at", "opened_at", "due_at", "resolved_at", "resolution",
    "satisfied",
)  # fmt: skip
_CASE_SQL = f"SELECT doc FROM {CASES_TABLE} WHERE customer_id = %s AND complaint_id = %s"
_CASES_OF_ID_SQL = (
    f"SELECT doc FROM {CASES_TABLE} WHERE complaint_id = %s ORDER BY customer_id LIMIT 21"
)


class ComplaintSummary(BaseModel):
    """A case as it stands: `opened_at` and `due_at` are the current episode's (a reopening
    starts a new one, with the full time of its severity); `resolved_at`, `resolution` and
    `satisfied` the last resolution's."""

    customer_id: str
    complaint_id: str
    category: str
    product_sku: str | None
    severity: Literal["low", "medium", "high"]
    description: str
    status: Literal["open", "resolved"]
    assignee: str | None
    episode: int = Field(description="1 for the filing, one more for each reopening")
    filed_at: datetime
    opened_at: datetime
    due_at: datetime
    resolved_at: datetime | None
    resolution: str | None
    satisfied: bool | None
    breached: bool = Field(description="open at or past `due_at` at the time of the request")


class ComplaintPage(BaseModel):
    complaints: list[ComplaintSummary] = Field(description="newest filed first")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null when there is no more"
    )


class Step(BaseModel):
    action: Literal["filed", "assigned", "resolved", "reopened"]
    at: datetime
    event_id: str
    details: dict[str, Any] = Field(
        description="filed: severity, due_at; assigned: assignee, previous; resolved: "
        "resolution, satisfied; reopened: reason, due_at"
    )


class ComplaintCase(ComplaintSummary):
    history: list[Step] = Field(description="every transition, oldest first")


ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"description": "A parameter out of its range or format (a `detail` message)"},
    503: {"model": Problem, "description": "Database unavailable; retry shortly"},
}


@router.get(
    "",
    response_class=JSONResponse,
    summary="Complaint cases",
    responses={200: {"model": ComplaintPage, "description": "A page of cases"}, **ERRORS},
)
async def list_complaints(
    pool: ReadPool,
    status_: Annotated[
        str | None, Query(alias="status", json_schema_extra={"enum": list(STATUSES)})
    ] = None,
    assignee: Annotated[str | None, Query(max_length=200)] = None,
    product_sku: Annotated[str | None, Query(max_length=100)] = None,
    severity: Annotated[str | None, Query(json_schema_extra={"enum": list(SEVERITIES)})] = None,
    category: Annotated[str | None, Query(max_length=100)] = None,
    customer_id: Annotated[str | None, Query(description="only this customer's cases")] = None,
    breached: Annotated[
        bool | None,
        Query(description="true: open past the deadline now; false: every other case"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="the `next_cursor` of a page")] = None,
) -> Response:
    """The cases matching every filter given, newest filed first, `limit` per page."""
    choice("status", status_, STATUSES)
    choice("severity", severity, SEVERITIES)
    if customer_id is not None:
        check_customer_id(customer_id)
    after = decode_cursor(cursor)
    now = datetime.now(UTC)
    clauses, params = ["true"], {"now": now, "limit": limit + 1}
    for column, value in (("status", status_), ("assignee", assignee),
                          ("product_sku", product_sku), ("severity", severity),
                          ("category", category), ("customer_id", customer_id)):  # fmt: skip
        if value is not None:
            clauses.append(f"{column} = %({column})s")
            params[column] = value
    if breached is not None:
        clauses.append(f"{'' if breached else 'NOT '}(status = 'open' AND due_at <= %(now)s)")
    if after is not None:
        clauses.append("(filed_at, customer_id, complaint_id) < (%(at)s, %(c)s, %(k)s)")
        params |= {"at": after[0], "c": after[1], "k": after[2]}
    query = (
        f"SELECT (doc - 'history')::text, status = 'open' AND due_at <= %(now)s "
        f"FROM {CASES_TABLE} WHERE {' AND '.join(clauses)} "
        "ORDER BY filed_at DESC, customer_id DESC, complaint_id DESC LIMIT %(limit)s"
    )
    rows = await fetch_all(pool, query, params)
    page = [_summary(orjson.loads(doc), late) for doc, late in rows[:limit]]
    last = page[-1] if page else None
    next_cursor = (
        encode_cursor(datetime.fromisoformat(last["filed_at"]), last["customer_id"],
                      last["complaint_id"])
        if last is not None and len(rows) > limit
        else None
    )  # fmt: skip
    body = {"complaints": page, "next_cursor": next_cursor}
    return Response(orjson.dumps(body), media_type="application/json")


def _summary(doc: dict[str, Any], breached: bool) -> dict[str, Any]:
    return {**{key: doc[key] for key in SUMMARY_FIELDS}, "breached": breached}


@router.get(
    "/{customer_id}/{complaint_id:path}",
    response_class=JSONResponse,
    summary="One complaint case with its history",
    responses={
        200: {"model": ComplaintCase, "description": "The case"},
        404: {"model": Problem, "description": "No such case (yet)"},
        **ERRORS,
    },
)
async def get_complaint(
    customer_id: CustomerId,
    complaint_id: Annotated[str, Path(max_length=100, examples=["K-7"])],
    pool: ReadPool,
) -> Response:
    """The case of `complaint_id` filed by the customer, with every transition, `breached` as
    of now."""
    check_customer_id(customer_id)
    rows = await fetch_all(pool, _CASE_SQL, [customer_id, complaint_id])
    if not rows:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"complaint {complaint_id} of customer {customer_id} is unknown (or not projected yet)",
        )
    return _case_response(rows[0][0])


@router.get(
    "/{complaint_id}",
    response_class=JSONResponse,
    summary="One complaint case by its id alone",
    responses={
        200: {"model": ComplaintCase, "description": "The case"},
        404: {"model": Problem, "description": "No case has this id (yet)"},
        409: {"model": Problem, "description": "Several customers have a case of this id"},
        **ERRORS,
    },
)
async def get_complaint_by_id(
    complaint_id: Annotated[str, Path(max_length=100, examples=["K-7"])], pool: ReadPool
) -> Response:
    """The case of `complaint_id` when exactly one customer has one; ids are unique per customer
    only, so several answer 409 naming them (ask GET /complaints/{customer_id}/{complaint_id})."""
    rows = await fetch_all(pool, _CASES_OF_ID_SQL, [complaint_id])
    if not rows:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no customer has a complaint {complaint_id} (yet)"
        )
    if len(rows) > 1:
        customers = [doc["customer_id"] for (doc,) in rows[:20]]
        more = " and more" if len(rows) > 20 else ""
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"complaint {complaint_id} names cases of several customers ({', '.join(customers)}"
            f"{more}): ask GET /complaints/{{customer_id}}/{complaint_id}",
        )
    return _case_response(rows[0][0])


def _case_response(doc: dict[str, Any]) -> Response:
    report = case_report(case_from_json(doc), datetime.now(UTC))
    ordered = {**{key: report[key] for key in SUMMARY_FIELDS}, "breached": report["breached"]}
    return Response(
        orjson.dumps(ordered | {"history": report["history"]}), media_type="application/json"
    )
