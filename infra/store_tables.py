"""The event store's table names and schema lock, and what the write-side ledgers beside it
(infra/case_ledger.py, infra/merge_ledger.py) share: looking up recorded event ids, and creating
a ledger's table filled from the events already stored."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar, TypeVar

import psycopg
from eventsourcing.postgres import PostgresDatastore
from psycopg import sql
from psycopg.rows import DictRow, dict_row

EVENTS_TABLE = "crm_events"
TRACKING_TABLE = "crm_tracking"
INTAKE_TABLE = "crm_intake"
SCHEMA_LOCK = 7_310_001  # advisory lock id serializing schema changes
BACKFILL_CHUNK = 1000
RECORDED_IDS_SQL = (
    f"SELECT event_id::text AS id FROM {INTAKE_TABLE} WHERE event_id = ANY(%s::uuid[])"
)
"""The recorded ones among an array of event ids."""

_Row = TypeVar("_Row")
Fill = Callable[[psycopg.Connection[DictRow]], int]
"""Writes a new table's rows on the connection given (in its transaction); how many."""


def recorded_ids(cursor: psycopg.Cursor[DictRow], event_ids: list[str]) -> set[str]:
    """The recorded ones among `event_ids`."""
    cursor.execute(RECORDED_IDS_SQL, (event_ids,))
    return {row["id"] for row in cursor.fetchall()}


class Ledger:
    """A write-side table beside the event store, created (and backfilled) by the recorder at
    start-up; until it exists, intake knows nothing of what it would hold."""

    table: ClassVar[str]

    def __init__(self, dsn: str, datastore: PostgresDatastore) -> None:
        self.dsn = dsn
        self.datastore = datastore
        self._exists = False

    def exists(self) -> bool:
        """Whether the table exists (asked until it does, then remembered)."""
        if not self._exists:
            with self.datastore.get_connection() as conn:
                self._exists = table_exists(conn, self.table)
        return self._exists

    def _create(self, create: sql.Composable, fill: Fill) -> int | None:
        """Create the table with `create` if missing, filled by `fill`, in one transaction that
        holds off inserts into the event store meanwhile, so the table never misses an event.
        The number of rows written, or None when the table existed."""
        if self.exists():
            return None
        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:  # one transaction
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            if table_exists(conn, self.table):
                return None
            conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(EVENTS_TABLE))
            )
            conn.execute(create)
            written = fill(conn)
        self._exists = True
        return written


def table_exists(conn: psycopg.Connection[DictRow], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL AS found", (table,)).fetchone()
    assert row is not None
    return bool(row["found"])


def chunks(items: Iterable[_Row], size: int = BACKFILL_CHUNK) -> Iterator[list[_Row]]:
    chunk: list[_Row] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
