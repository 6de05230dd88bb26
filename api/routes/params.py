"""Query parameters shared by the complaint, follow-up and report routes: times, paging cursors,
and the 422 they answer when a value is wrong (saying what was expected and what came)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, date, datetime
from typing import Any, NoReturn

import orjson
from fastapi import HTTPException, status
from psycopg.errors import UndefinedTable
from psycopg_pool import AsyncConnectionPool

from events.fields import FieldError, parse_rfc3339
from projections.recorded import rfc3339

MAX_PAGE = 500


def invalid(detail: str) -> NoReturn:
    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail)


def moment(name: str, value: str | None) -> datetime | None:
    """A time parameter: an RFC 3339 timestamp with its offset, or a date `YYYY-MM-DD` (its
    midnight, UTC)."""
    if value is None:
        return None
    if len(value) == 10:
        try:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        except ValueError:
            pass
    try:
        return parse_rfc3339(value)
    except FieldError:
        invalid(
            f"{name} must be an RFC 3339 timestamp with offset (2026-11-23T10:15:00Z) or a date "
            f"(2026-11-23), got {value!r}"
        )


def choice(name: str, value: str | None, options: tuple[str, ...]) -> str | None:
    if value is not None and value not in options:
        invalid(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return value


def encode_cursor(at: datetime, customer_id: str, item_id: str) -> str:
    """An opaque `cursor` for the page after the item (its sort key)."""
    raw = orjson.dumps([rfc3339(at), customer_id, item_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None) -> tuple[datetime, str, str] | None:
    """The sort key in a cursor this API gave; 422 for anything else."""
    if value is None:
        return None
    try:
        at, customer_id, item_id = orjson.loads(
            base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        )
        when = datetime.fromisoformat(at)
        if when.utcoffset() is None:
            raise ValueError("naive")
        return when, str(customer_id), str(item_id)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        invalid(f"cursor must be the next_cursor of a page, got {value!r}")


async def fetch_all(
    pool: AsyncConnectionPool[Any], query: str, params: dict[str, Any] | list[Any]
) -> list[Any]:
    """All rows of a read-model query; none before the projector has created its tables."""
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall()
    except UndefinedTable:
        return []
