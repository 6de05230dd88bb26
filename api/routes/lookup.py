"""GET /customers/lookup?phone=... or ?email=...: who is calling, for the screen pop.

The input is normalized as the identifier index is (projections/identity.py: E.164 with the
settings' default region, e-mail stripped and lower-cased), then looked up in rm_identifiers on
its primary key. One customer: their 360 (as GET /customers/{customer_id}) with `matched_by`;
several: a short list saying why each matched. Merges are followed: an identifier of a customer
merged away leads to its survivor (`seen_on` names the customer it was seen on), and a survivor
is listed once. Registered before GET /customers/{customer_id},
so "lookup" is never read as a customer id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse
from psycopg.errors import UndefinedTable
from pydantic import BaseModel, Field

from api.customer_document import customer_document
from api.deps import AppSettings, ReadPool
from api.routes.customers import Customer360, Problem
from projections.identifiers import LOOKUP_SQL
from projections.identity import IdentifierKind, normalize_email, normalize_phone, rejection
from projections.recorded import rfc3339

MAX_MATCHES = 20

router = APIRouter(prefix="/customers", tags=["customers"])


class Match(BaseModel):
    """Why a customer matched: the identifier, the event type that gave it last, when."""

    kind: IdentifierKind
    value: str = Field(description="the normalized identifier (E.164, or the address)")
    seen_on: str = Field(description="the customer it was seen on: this one, or one merged into it")
    source: str = Field(description="event type that gave it last, e.g. call.logged")
    first_seen: datetime
    last_seen: datetime


class CustomerMatch(Match):
    customer_id: str
    name: str | None


class Matches(BaseModel):
    """Several customers have the identifier: most recently seen first."""

    kind: IdentifierKind
    value: str
    matches: list[CustomerMatch]
    truncated: bool = Field(description=f"more than {MAX_MATCHES} matched")


class LookedUp(Customer360):
    """One customer has the identifier: their 360 and how it matched."""

    matched_by: Match


@router.get(
    "/lookup",
    response_class=JSONResponse,
    summary="Find the customer by phone or e-mail",
    responses={
        200: {"model": LookedUp | Matches, "description": "The 360, or the list of matches"},
        404: {"model": Problem, "description": "No customer has that identifier"},
        422: {"description": "Neither or both parameters, a placeholder or an unparseable value"},
    },
)
async def lookup(
    pool: ReadPool,
    settings: AppSettings,
    phone: Annotated[str | None, Query(max_length=64, examples=["030 1234 5678"])] = None,
    email: Annotated[str | None, Query(max_length=320, examples=["ada@example.com"])] = None,
) -> Response:
    """The customer whose phone number or e-mail address this is (normalized first)."""
    if (phone is None) == (email is None):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "give exactly one of the query parameters phone and email",
        )
    kind: IdentifierKind = "phone" if phone is not None else "email"
    text = phone if phone is not None else email
    assert text is not None
    region = settings.phone_region
    value = normalize_phone(text, region) if kind == "phone" else normalize_email(text)
    if value is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{kind} {text!r} is {rejection(kind, text, region)}: it matches no customer",
        )
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(LOOKUP_SQL, (kind, value, MAX_MATCHES + 1))
            rows = await cursor.fetchall()
    except UndefinedTable:
        rows = []  # the projector has not created the index yet
    if not rows:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no customer has the {kind} {value}")
    now = datetime.now(UTC)
    if len(rows) == 1:
        customer_id, _, seen_on, source, first_seen, last_seen = rows[0]
        document = await customer_document(pool, customer_id, now)
        if isinstance(document, dict):
            document["matched_by"] = _match(kind, value, seen_on, source, first_seen, last_seen)
            return Response(orjson.dumps(document), media_type="application/json")
    body = {
        "kind": kind,
        "value": value,
        "matches": [
            {"customer_id": c, "name": name, **_match(kind, value, seen, source, first, last)}
            for c, name, seen, source, first, last in rows[:MAX_MATCHES]
        ],
        "truncated": len(rows) > MAX_MATCHES,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def _match(
    kind: str, value: str, seen_on: str, source: str, first_seen: datetime, last_seen: datetime
) -> dict[str, Any]:
    return {"kind": kind, "value": value, "seen_on": seen_on, "source": source,
            "first_seen": rfc3339(first_seen), "last_seen": rfc3339(last_seen)}  # fmt: skip
