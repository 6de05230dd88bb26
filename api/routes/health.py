"""GET /health: can the API reach the broker and PostgreSQL right now?"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Response, status
from psycopg import Error as DatabaseError
from psycopg_pool import ConnectionPool
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import Pool, Producer
from api.producer import BrokerUnavailable, LazyProducer

DB_TIMEOUT_S = 2.0

router = APIRouter(tags=["health"])


class BrokerHealth(BaseModel):
    reachable: bool
    bootstrap: str
    error: str | None = None


class DatabaseHealth(BaseModel):
    reachable: bool
    error: str | None = None


class Health(BaseModel):
    """`degraded` (with HTTP 503) when the broker or the database cannot be reached."""

    status: Literal["ok", "degraded"]
    broker: BrokerHealth
    database: DatabaseHealth


@router.get(
    "/health",
    response_model=Health,
    response_model_exclude_none=True,
    responses={503: {"model": Health, "description": "Broker or database unreachable"}},
)
async def get_health(producer: Producer, pool: Pool, response: Response) -> Health:
    """Check the broker (topic metadata) and PostgreSQL (`SELECT 1`), each in a few seconds."""
    broker, database = await asyncio.gather(
        run_in_threadpool(_check_broker, producer), run_in_threadpool(_check_database, pool)
    )
    ok = broker.reachable and database.reachable
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ok else "degraded", broker=broker, database=database)


def _check_broker(producer: LazyProducer) -> BrokerHealth:
    try:
        producer.check()
    except BrokerUnavailable as error:
        return BrokerHealth(reachable=False, bootstrap=producer.bootstrap, error=str(error))
    return BrokerHealth(reachable=True, bootstrap=producer.bootstrap)


def _check_database(pool: ConnectionPool) -> DatabaseHealth:
    try:
        with pool.connection(timeout=DB_TIMEOUT_S) as conn:
            conn.execute("SELECT 1")
    except DatabaseError as error:  # PoolTimeout included
        return DatabaseHealth(reachable=False, error=str(error))
    return DatabaseHealth(reachable=True)
