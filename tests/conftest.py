"""Shared fixtures: one embedded broker and one embedded PostgreSQL per test session.

Both start on first use and stop at the end of the session (and die with the test process
if it is killed, through the parent-death signal set in infra.processes).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from infra.broker import EmbeddedBroker
from infra.ports import free_port
from infra.postgres import EmbeddedPostgres
from infra.topics import ensure_topics

TOPIC_PARTITIONS = 6


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A running embedded broker with every platform topic created (6 partitions)."""
    with EmbeddedBroker(free_port(), tmp_path_factory.mktemp("broker")) as embedded:
        ensure_topics(embedded.bootstrap, TOPIC_PARTITIONS)
        yield embedded


@pytest.fixture(scope="session")
def postgres_root() -> Iterator[Path]:
    """Temporary folder for PostgreSQL data folders, removed at the end of the session.

    Not under pytest's tmp_path: as root, postgres runs as an unprivileged user that must traverse
    every parent folder, and each new pytest run resets /tmp/pytest-of-root to mode 0700, which
    breaks the servers of a pytest run going on at the same time.
    """
    root = Path(tempfile.mkdtemp(prefix="crm-test-pg-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(postgres_root: Path) -> Iterator[EmbeddedPostgres]:
    """A running embedded PostgreSQL for the whole session."""
    with EmbeddedPostgres(postgres_root / "session" / "data", free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def database_url(postgres: EmbeddedPostgres) -> str:
    """URL of the shared `postgres` database (shared by every test: prefer fresh_database)."""
    return postgres.url


@contextmanager
def new_database(postgres: EmbeddedPostgres) -> Iterator[str]:
    """URL of a new, empty database on `postgres`; dropped on exit."""
    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield postgres.url_for(name)
    finally:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


@pytest.fixture
def fresh_database(postgres: EmbeddedPostgres) -> Iterator[str]:
    """URL of a new, empty database for this test only; dropped afterwards."""
    with new_database(postgres) as url:
        yield url


@pytest.fixture
def restart_broker(broker: EmbeddedBroker) -> Callable[[], None]:
    """A callable that restarts the session broker (empty) and recreates the platform topics."""

    def restart() -> None:
        broker.restart()
        ensure_topics(broker.bootstrap, TOPIC_PARTITIONS, recreate_wrong=True)

    return restart
