"""Composition root of the HTTP API: wires settings, the Kafka clients, the PostgreSQL pools and
the event store into the routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from eventsourcing.persistence import OperationalError as PersistenceOperationalError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg import OperationalError
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from starlette.concurrency import run_in_threadpool

from api.alert_feed import AlertFeed
from api.openapi import add_touchpoint_schemas
from api.producer import LazyProducer
from api.routes import (
    alerts,
    balances,
    complaints,
    customers,
    events,
    followups,
    health,
    lookup,
    reports,
    subscriptions,
)
from api.routes.health import ConsumerLag
from events.topics import EVENTS, TOUCHPOINTS
from infra.eventstore import EventStore
from infra.settings import Settings

log = logging.getLogger(__name__)

DB_CONNECT_TIMEOUT_S = 2
DB_WAIT_S = 5
"""Longest wait for a pooled connection before a request fails with 503."""


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app. It starts while the broker or PostgreSQL is down; /health tells."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        producer = LazyProducer(settings.bootstrap)
        pool = ConnectionPool(
            settings.dsn,
            min_size=1,
            max_size=10,
            kwargs={"connect_timeout": DB_CONNECT_TIMEOUT_S},
            open=False,
            name="crm-api",
        )
        pool.open(wait=False)
        read_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.dsn,
            min_size=2,
            max_size=10,
            timeout=DB_WAIT_S,
            kwargs={"connect_timeout": DB_CONNECT_TIMEOUT_S, "autocommit": True},
            open=False,
            name="crm-api-read",
        )
        await read_pool.open(wait=False)
        store = EventStore(settings.dsn, pool_size=4)
        groups = {settings.recorder_group: TOUCHPOINTS, settings.projector_group: EVENTS}
        consumer_lag = ConsumerLag(settings.bootstrap, groups)
        alert_feed = AlertFeed(settings.dsn)
        alert_feed.start()
        state = {
            "settings": settings,
            "producer": producer,
            "pool": pool,
            "read_pool": read_pool,
            "store": store,
            "consumer_lag": consumer_lag,
            "alert_feed": alert_feed,
        }
        try:
            yield state
        finally:
            await alert_feed.stop()
            await run_in_threadpool(producer.close)
            await run_in_threadpool(consumer_lag.close)
            await read_pool.close()
            await run_in_threadpool(store.close)
            await run_in_threadpool(pool.close)

    app = FastAPI(title="CRM platform", lifespan=lifespan)
    app.include_router(events.router)
    app.include_router(lookup.router)  # before /customers/{customer_id}
    app.include_router(customers.router)
    app.include_router(balances.router)
    app.include_router(complaints.router)
    app.include_router(followups.router)
    app.include_router(reports.router)
    app.include_router(alerts.router)
    app.include_router(subscriptions.router)
    app.include_router(health.router)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(PersistenceOperationalError, _database_unavailable)
    app.add_exception_handler(Exception, _internal_error)
    add_touchpoint_schemas(app)
    return app


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    path = request.url.path
    log.warning("database unavailable method=%s path=%s error=%r", request.method, path, str(error))
    return JSONResponse({"detail": "the database is unavailable; retry shortly"}, status_code=503)


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    log.error("request failed method=%s path=%s", request.method, request.url.path, exc_info=error)
    return JSONResponse({"detail": "internal server error"}, status_code=500)
