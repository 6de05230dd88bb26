"""The complaint-case ledger: crm_complaint_cases holds the state of every complaint case after
the complaint events recorded so far, written in the transaction of the events that changed it
(each row only over the revision it was computed from), and read by intake to check the next
complaint events (services/intake_guards.py, api/ingest.py)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import DictRow

from events.codec import decode
from events.envelope import Envelope
from infra.store_tables import EVENTS_TABLE, Ledger, chunks, recorded_ids

COMPLAINT_CASES_TABLE = "crm_complaint_cases"

CaseKey = tuple[str, str]
"""(customer_id, complaint_id)."""


@dataclass(frozen=True, slots=True)
class StoredCase:
    """A row of the complaint case table: the case state (JSON, as its writer made it) after
    `revision` recorded complaint events."""

    revision: int
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CaseWrite:
    """A complaint case after `event_ids` (recorded in the same transaction), written only over
    the `revision` it was computed from (0: no row yet)."""

    customer_id: str
    complaint_id: str
    revision: int
    state: dict[str, Any]
    event_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CaseWrites:
    """The case changes of a batch: every new event of a `types` type must have made one."""

    types: frozenset[str]
    writes: Sequence[CaseWrite]


@dataclass(frozen=True, slots=True)
class ComplaintState:
    """What intake needs to check complaint events: which of their ids are already recorded,
    and the recorded cases they are about."""

    known: set[str]
    cases: dict[CaseKey, StoredCase]


class CaseConflict(Exception):
    """Case writes computed from states that are no longer current (another writer moved a case
    on, or an event they count is recorded already): check the batch again."""


CaseBackfill = Callable[[Iterator[Envelope]], Iterable[CaseWrite]]
"""Folds stored complaint events (by customer, in version order) into case rows."""

_CREATE_CASES = sql.SQL(
    "CREATE TABLE {} (customer_id text NOT NULL, complaint_id text NOT NULL, "
    "revision bigint NOT NULL, state jsonb NOT NULL, PRIMARY KEY (customer_id, complaint_id))"
).format(sql.Identifier(COMPLAINT_CASES_TABLE))
_WRITE_CASES = sql.SQL(
    "WITH w AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], "
    "%s::text[]) AS w(customer_id, complaint_id, expected, revision, state)), "
    "updated AS (UPDATE {t} c SET revision = w.revision, state = w.state::jsonb FROM w "
    "WHERE w.expected > 0 AND c.customer_id = w.customer_id "
    "AND c.complaint_id = w.complaint_id AND c.revision = w.expected RETURNING 1), "
    "inserted AS (INSERT INTO {t} (customer_id, complaint_id, revision, state) "
    "SELECT customer_id, complaint_id, revision, state::jsonb FROM w WHERE expected = 0 "
    "ON CONFLICT DO NOTHING RETURNING 1) "
    "SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted) AS n"
).format(t=sql.Identifier(COMPLAINT_CASES_TABLE))


class CaseLedger(Ledger):
    """Reads and creates crm_complaint_cases (the event store writes it: `write_cases`)."""

    table = COMPLAINT_CASES_TABLE

    def create(self, types: Collection[str], backfill: CaseBackfill) -> int | None:
        """Create the table if missing, filled by `backfill` from the events of `types`
        already stored; the number of cases written, or None when the table existed."""

        def fill(conn: psycopg.Connection[DictRow]) -> int:
            written = 0
            with conn.cursor() as curs:
                for chunk in chunks(backfill(_stored_envelopes(conn, types))):
                    write_cases(curs, chunk)
                    written += len(chunk)
            return written

        return self._create(_CREATE_CASES, fill)

    def state(self, event_ids: list[str], keys: Collection[CaseKey]) -> ComplaintState:
        """The recorded ones among `event_ids`, and the recorded cases of `keys` (one
        connection, two indexed lookups). Nothing is known while the table does not exist."""
        if not self.exists():
            return ComplaintState(set(), {})
        customers, complaints = [k[0] for k in keys], [k[1] for k in keys]
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            known = recorded_ids(cursor, event_ids)
            cursor.execute(
                f"SELECT c.customer_id, c.complaint_id, c.revision, c.state::text AS state "
                f"FROM {COMPLAINT_CASES_TABLE} c "
                "JOIN unnest(%s::text[], %s::text[]) AS k(customer_id, complaint_id) "
                "USING (customer_id, complaint_id)",
                (customers, complaints),
            )
            cases = {
                (row["customer_id"], row["complaint_id"]): StoredCase(
                    row["revision"], orjson.loads(row["state"])
                )
                for row in cursor.fetchall()
            }
        return ComplaintState(known, cases)


def write_cases(curs: psycopg.Cursor[DictRow], cases: Sequence[CaseWrite]) -> None:
    """Write case rows, each only over the revision it was computed from; CaseConflict when
    any row has moved on (nothing of the transaction is then kept)."""
    curs.execute(
        _WRITE_CASES,
        (
            [c.customer_id for c in cases],
            [c.complaint_id for c in cases],
            [c.revision for c in cases],
            [c.revision + len(c.event_ids) for c in cases],
            [orjson.dumps(c.state).decode() for c in cases],
        ),
    )
    row = curs.fetchone()
    written = None if row is None else row["n"]
    if written != len(cases):
        raise CaseConflict(
            f"expected to write {len(cases)} complaint cases over the revisions read, wrote "
            f"{written}: another writer changed some of them"
        )


def check_case_writes(fresh: Sequence[Envelope], cases: CaseWrites) -> None:
    """CaseConflict unless the case writes count exactly the new events of the guarded types."""
    guarded = {e.event_id for e in fresh if e.type in cases.types}
    counted = {event_id for write in cases.writes for event_id in write.event_ids}
    if guarded != counted:
        raise CaseConflict(
            f"expected the case writes to count the {len(guarded)} new complaint events, they "
            f"count {len(counted)} ({len(counted - guarded)} already recorded, "
            f"{len(guarded - counted)} unchecked)"
        )


def _stored_envelopes(
    conn: psycopg.Connection[DictRow], types: Collection[str]
) -> Iterator[Envelope]:
    """The stored events of `types`, by customer then version (a server-side cursor)."""
    with conn.cursor(name="crm_complaint_backfill") as cursor:
        cursor.execute(
            f"SELECT state FROM {EVENTS_TABLE} WHERE topic = ANY(%s::text[]) "
            "ORDER BY originator_id, originator_version",
            (list(types),),
        )
        for row in cursor:
            yield decode(bytes(row["state"]), max_bytes=len(row["state"]))
