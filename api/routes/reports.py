"""Reports for management, computed by PostgreSQL over read models (rules in
projections/reports.py):

- GET /reports/complaints: the complaints filed in [from, to), grouped, as they stand now (from
  the case rows, rm_complaint_cases);
- GET /reports/touchpoints: the events that occurred in [from, to), grouped (from the touchpoint
  index, rm_touchpoints: one row per recorded event).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import ReadPool
from api.routes.customers import Problem
from api.routes.params import choice, fetch_all, invalid, moment
from projections.recorded import rfc3339
from projections.reports import (
    complaint_report_sql,
    groupings,
    report_from_rows,
    touchpoint_report_sql,
)

router = APIRouter(prefix="/reports", tags=["reports"])

_TIME = "RFC 3339 with offset, or a date (its midnight UTC)"
From = Annotated[
    str, Query(alias="from", description=f"{_TIME}; included", examples=["2026-11-01"])
]
To = Annotated[str, Query(description=f"{_TIME}; excluded", examples=["2026-12-01"])]


class ComplaintGroup(BaseModel):
    key: str | None = Field(description="null: complaints without a product_sku (last)")
    filed: int
    resolved: int = Field(description="resolved now")
    open: int = Field(description="open now, reopened ones included")
    breached: int = Field(description="some episode open at its deadline, by now")
    breach_rate: str = Field(description="breached / filed, 4 decimals", examples=["0.2500"])
    median_hours_to_resolve: str | None = Field(
        description="filing to last resolution, over the resolved ones; null if none",
        examples=["30.50"],
    )


class ComplaintReport(BaseModel):
    from_: datetime = Field(alias="from")
    to: datetime
    group_by: Literal["category", "product_sku", "severity"]
    as_of: datetime = Field(description="the time `open` and `breached` are worked out at")
    groups: list[ComplaintGroup] = Field(description="sorted by key")


class TouchpointGroup(BaseModel):
    key: str
    count: int
    customers: int = Field(description="distinct customers")


class TouchpointReport(BaseModel):
    from_: datetime = Field(alias="from")
    to: datetime
    group_by: Literal["type", "source", "month"]
    groups: list[TouchpointGroup] = Field(description="sorted by key")


ERRORS = {
    422: {"description": "A missing or malformed date, `from` not before `to`, an unknown "
          "group_by (a `detail` message)"},
    503: {"model": Problem, "description": "Database unavailable; retry shortly"},
}  # fmt: skip


def _range(start: str, end: str) -> tuple[datetime, datetime]:
    first, last = moment("from", start), moment("to", end)
    if first is None or last is None:
        invalid("from and to are both required")
    if first >= last:
        invalid(f"from must be before to, got from={rfc3339(first)} and to={rfc3339(last)}")
    return first, last


@router.get(
    "/complaints",
    response_class=JSONResponse,
    summary="Complaint report",
    responses={200: {"model": ComplaintReport, "description": "The report"}, **ERRORS},
)
async def complaint_report(
    pool: ReadPool,
    from_: From,
    to: To,
    group_by: Annotated[
        str, Query(json_schema_extra={"enum": list(groupings("complaints"))})
    ] = "category",
) -> Response:
    """Complaints filed in [from, to) by category, product_sku or severity: how many, resolved
    and open now, the median time from filing to resolution, and the breach rate."""
    start, end = _range(from_, to)
    choice("group_by", group_by, groupings("complaints"))
    now = datetime.now(UTC)
    params = {"start": start, "end": end, "now": now}
    rows = await fetch_all(pool, complaint_report_sql(group_by), params)
    report = report_from_rows("complaints", rows, start=start, end=end, group_by=group_by)
    body = report.to_json()
    body = {**{k: body[k] for k in ("from", "to", "group_by")}, "as_of": rfc3339(now), **body}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/touchpoints",
    response_class=JSONResponse,
    summary="Touchpoint report",
    responses={200: {"model": TouchpointReport, "description": "The report"}, **ERRORS},
)
async def touchpoint_report(
    pool: ReadPool,
    from_: From,
    to: To,
    group_by: Annotated[
        str, Query(json_schema_extra={"enum": list(groupings("touchpoints"))})
    ] = "type",
) -> Response:
    """Events that occurred in [from, to) by type, source or UTC month: how many, of how many
    distinct customers."""
    start, end = _range(from_, to)
    choice("group_by", group_by, groupings("touchpoints"))
    rows = await fetch_all(pool, touchpoint_report_sql(group_by), {"start": start, "end": end})
    report = report_from_rows("touchpoints", rows, start=start, end=end, group_by=group_by)
    return Response(orjson.dumps(report.to_json()), media_type="application/json")
