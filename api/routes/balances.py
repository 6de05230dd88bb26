"""GET /customers/{customer_id}/balance: what the customer owes, per currency, with the aging of
open invoices as of a day (today in UTC unless `as_of` is given), and their credit terms.

The read model keeps invoices with their due dates, not days overdue: aging is computed on every
request, so it moves on as days pass without any event.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.customer_document import merge_links
from api.deps import ReadPool, Store
from api.routes.customers import (
    ERRORS,
    CustomerId,
    MergedInto,
    Money,
    check_customer_id,
    fetch_row,
    merged_away,
    not_found,
)
from projections.balance import BALANCE, from_json, report

router = APIRouter(prefix="/customers", tags=["customers"])

# Text, parsed with orjson: faster than psycopg's JSON loader.
_BALANCE_SQL = f"SELECT doc::text FROM {BALANCE.table} WHERE customer_id = %s"


class Aging(BaseModel):
    """Outstanding on open invoices by days past due."""

    current: Money = Field(description="not yet due")
    days_1_30: Money = Field(alias="1-30")
    days_31_60: Money = Field(alias="31-60")
    days_61_90: Money = Field(alias="61-90")
    days_90_plus: Money = Field(alias="90+")


class CurrencyBalance(BaseModel):
    invoiced: Money
    paid: Money
    refunded: Money = Field(description="refunds of known orders")
    outstanding: Money = Field(description="invoiced - paid - refunded; negative: in credit")
    overdue: Money = Field(description="outstanding on invoices past their due date")
    aging: Aging


class Credit(BaseModel):
    """The last credit terms set; every field null while none were."""

    limit: Money | None
    currency: str | None
    available: Money | None = Field(description="limit - outstanding in its currency")
    payment_terms_days: int | None


class OpenInvoice(BaseModel):
    invoice_id: str
    currency: str
    amount: Money
    paid: Money
    outstanding: Money
    due_date: date
    days_overdue: int = Field(description="days past the due date on `as_of`; <= 0: not due")


class BalanceReport(BaseModel):
    """The balance and credit view of one customer as of a day."""

    customer_id: str
    balances: dict[str, CurrencyBalance] = Field(description="by ISO 4217 currency")
    credit: Credit
    open_invoices: list[OpenInvoice] = Field(description="oldest due first")
    as_of: date


class SurvivorBalance(BalanceReport):
    """A customer's own balance, and that of each customer merged into it (each its own ledger:
    invoice ids are unique per customer only). The 360's balance adds them up."""

    merged: list[BalanceReport] = Field(description="by customer id")


@router.get(
    "/{customer_id}/balance",
    response_class=JSONResponse,
    summary="Balance and credit",
    responses={
        200: {"model": SurvivorBalance, "description": "The balance"},
        308: {"model": MergedInto, "description": "Merged away: `Location` is the survivor's"},
        **ERRORS,
    },
)
async def get_balance(
    customer_id: CustomerId,
    pool: ReadPool,
    store: Store,
    as_of: Annotated[
        date | None, Query(description="the day to age invoices on; default today (UTC)")
    ] = None,
) -> Response:
    """Balances per currency, aging, open invoices and credit; zeros for a customer who has
    never been invoiced."""
    check_customer_id(customer_id)
    survivor, merged = await merge_links(pool, customer_id)
    if survivor != customer_id:
        return merged_away(customer_id, survivor, "/balance")
    row = await fetch_row(pool, _BALANCE_SQL, customer_id)
    if row is None:
        raise await not_found(store, customer_id)
    day = as_of or datetime.now(UTC).date()
    body = report(from_json(orjson.loads(row[0])), day)
    rows = [await fetch_row(pool, _BALANCE_SQL, c) for c in merged]
    body["merged"] = [report(from_json(orjson.loads(r[0])), day) for r in rows if r is not None]
    return Response(orjson.dumps(body), media_type="application/json")
