"""Composition root of the HTTP API: wires settings, the Kafka producer and the PostgreSQL pool
into the routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from api.openapi import add_touchpoint_schemas
from api.producer import LazyProducer
from api.routes import events, health
from infra.settings import Settings

log = logging.getLogger(__name__)

DB_CONNECT_TIMEOUT_S = 2


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
        try:
            yield {"settings": settings, "producer": producer, "pool": pool}
        finally:
            await run_in_threadpool(producer.close)
            await run_in_threadpool(pool.close)

    app = FastAPI(title="CRM platform", lifespan=lifespan)
    app.include_router(events.router)
    app.include_router(health.router)
    app.add_exception_handler(Exception, _internal_error)
    add_touchpoint_schemas(app)
    return app


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    log.error("request failed method=%s path=%s", request.method, request.url.path, exc_info=error)
    return JSONResponse({"detail": "internal server error"}, status_code=500)
