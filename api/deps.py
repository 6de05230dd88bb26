"""Dependency aliases for route signatures; the resources come from the app's lifespan state.

The providers are `async def` on purpose: they only read the request state, and a plain `def`
dependency would cost a worker-thread round trip on every request.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from api.alert_feed import AlertFeed
from api.producer import LazyProducer
from infra.eventstore import EventStore
from infra.settings import Settings


async def _settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


async def _producer(request: Request) -> LazyProducer:
    producer: LazyProducer = request.state.producer
    return producer


async def _pool(request: Request) -> ConnectionPool:
    pool: ConnectionPool = request.state.pool
    return pool


async def _read_pool(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = request.state.read_pool
    return pool


async def _alert_feed(request: Request) -> AlertFeed:
    feed: AlertFeed = request.state.alert_feed
    return feed


async def _store(request: Request) -> EventStore:
    store: EventStore = request.state.store
    return store


AppSettings = Annotated[Settings, Depends(_settings)]
Producer = Annotated[LazyProducer, Depends(_producer)]
Pool = Annotated[ConnectionPool, Depends(_pool)]
"""Blocking pool: use it from plain `def` endpoints or worker threads."""
ReadPool = Annotated[AsyncConnectionPool[Any], Depends(_read_pool)]
"""Autocommit async pool for single-statement reads on the event loop (the hot read paths)."""
Store = Annotated[EventStore, Depends(_store)]
"""The event store (blocking): call it from plain `def` endpoints or worker threads."""
Feed = Annotated[AlertFeed, Depends(_alert_feed)]
"""Wakes the alert streams when alerts are logged (one LISTEN connection per process)."""
