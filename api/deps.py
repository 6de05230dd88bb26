"""Dependency aliases for route signatures; the resources come from the app's lifespan state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from api.producer import LazyProducer
from infra.settings import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


def _producer(request: Request) -> LazyProducer:
    producer: LazyProducer = request.state.producer
    return producer


def _pool(request: Request) -> ConnectionPool:
    pool: ConnectionPool = request.state.pool
    return pool


AppSettings = Annotated[Settings, Depends(_settings)]
Producer = Annotated[LazyProducer, Depends(_producer)]
Pool = Annotated[ConnectionPool, Depends(_pool)]
