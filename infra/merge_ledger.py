"""The merge ledger: crm_customer_merges holds every accepted customer merge (merged away → into,
its event and position), written in the transaction of its event under the event table's lock
(so two merges checked against the same old merges cannot both take effect), and read by intake
to check the next merge events (services/intake_guards.py, api/ingest.py)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import DictRow

from events.codec import decode
from events.envelope import Envelope
from infra.store_tables import EVENTS_TABLE, INTAKE_TABLE, Ledger, chunks, recorded_ids

CUSTOMER_MERGES_TABLE = "crm_customer_merges"


@dataclass(frozen=True, slots=True)
class MergeRow:
    """A row of the merge table: `customer_id` was merged away into `into_customer_id` by the
    event `event_id`, at global `position` (0 for a row not written yet: the position of its
    event, recorded in the same transaction, is taken)."""

    customer_id: str
    into_customer_id: str
    event_id: str
    position: int = 0


@dataclass(frozen=True, slots=True)
class MergeWrites:
    """The merges of a batch: every new event of type `type` must be one of `rows`, and the
    customers in `unmerged` (those the check found not merged away) must still not be when
    they are written."""

    type: str
    rows: Sequence[MergeRow]
    unmerged: frozenset[str]


@dataclass(frozen=True, slots=True)
class MergeState:
    """What intake needs to check merge events: which of their ids are already recorded, the
    recorded merges of the customers asked about (and the chains from them), and which of
    those customers have an event recorded (None: not known, the merge table does not exist
    yet)."""

    known: set[str]
    merged_into: dict[str, str]
    customers: set[str] | None


class MergeConflict(Exception):
    """Merge writes checked against merges that are no longer current (another writer merged
    one of their customers meanwhile, or an event they count is recorded already): check the
    batch again."""


MergeBackfill = Callable[[Iterator[tuple[int, Envelope]]], Iterable[MergeRow]]
"""Folds stored merge events (position, envelope; in position order) into merge rows."""

_CREATE_MERGES = sql.SQL(
    "CREATE TABLE {} (customer_id text PRIMARY KEY, into_customer_id text NOT NULL, "
    "event_id uuid NOT NULL UNIQUE, position bigint NOT NULL)"
).format(sql.Identifier(CUSTOMER_MERGES_TABLE))
_STILL_UNMERGED = sql.SQL(
    "SELECT customer_id, into_customer_id FROM {} WHERE customer_id = ANY(%s::text[])"
).format(sql.Identifier(CUSTOMER_MERGES_TABLE))
_INSERT_MERGES = sql.SQL(
    "INSERT INTO {m} (customer_id, into_customer_id, event_id, position) "
    "SELECT w.customer_id, w.into_customer_id, w.event_id, e.notification_id "
    "FROM unnest(%s::text[], %s::text[], %s::uuid[]) AS w(customer_id, into_customer_id, event_id) "
    "JOIN {i} i ON i.event_id = w.event_id "
    "JOIN {e} e ON e.originator_id = i.customer_id AND e.originator_version = i.version"
).format(
    m=sql.Identifier(CUSTOMER_MERGES_TABLE),
    i=sql.Identifier(INTAKE_TABLE),
    e=sql.Identifier(EVENTS_TABLE),
)
_BACKFILL_MERGES = sql.SQL(
    "INSERT INTO {} (customer_id, into_customer_id, event_id, position) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::uuid[], %s::bigint[])"
).format(sql.Identifier(CUSTOMER_MERGES_TABLE))
_MERGE_CHAINS = sql.SQL(
    "WITH RECURSIVE chain(customer_id, into_customer_id) AS ("
    "SELECT customer_id, into_customer_id FROM {m} WHERE customer_id = ANY(%s::text[]) "
    "UNION SELECT m.customer_id, m.into_customer_id FROM {m} m "
    "JOIN chain ON m.customer_id = chain.into_customer_id) "
    "SELECT customer_id, into_customer_id FROM chain"
).format(m=sql.Identifier(CUSTOMER_MERGES_TABLE))


class MergeLedger(Ledger):
    """Reads and creates crm_customer_merges (the event store writes it: `check_still_unmerged`
    then `insert_merges`)."""

    table = CUSTOMER_MERGES_TABLE

    def create(self, type_: str, backfill: MergeBackfill) -> int | None:
        """Create the table if missing, filled by `backfill` from the events of `type_`
        already stored (in position order); the number of merges written, or None when the
        table existed."""

        def fill(conn: psycopg.Connection[DictRow]) -> int:
            written = 0
            with conn.cursor() as curs:
                for chunk in chunks(backfill(_stored_by_position(conn, type_))):
                    curs.execute(
                        _BACKFILL_MERGES,
                        (
                            [m.customer_id for m in chunk],
                            [m.into_customer_id for m in chunk],
                            [m.event_id for m in chunk],
                            [m.position for m in chunk],
                        ),
                    )
                    written += len(chunk)
            return written

        return self._create(_CREATE_MERGES, fill)

    def state(self, event_ids: list[str], customer_ids: Collection[str]) -> MergeState:
        """The recorded ones among `event_ids`, the recorded merges of `customer_ids` with the
        chains from them, and which of `customer_ids` have an event recorded (one connection,
        three indexed lookups). Nothing is known while the table does not exist."""
        if not self.exists():
            return MergeState(set(), {}, None)
        customers = sorted(customer_ids)
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            known = recorded_ids(cursor, event_ids)
            cursor.execute(_MERGE_CHAINS, (customers,))
            merged_into = {row["customer_id"]: row["into_customer_id"] for row in cursor}
            cursor.execute(
                f"SELECT k.id FROM unnest(%s::text[]) AS k(id) WHERE EXISTS "
                f"(SELECT 1 FROM {EVENTS_TABLE} e WHERE e.originator_id = k.id)",
                (customers,),
            )
            with_events = {row["id"] for row in cursor.fetchall()}
        return MergeState(known, merged_into, with_events)


def check_still_unmerged(curs: psycopg.Cursor[DictRow], merges: MergeWrites) -> None:
    """MergeConflict when a customer the merges were checked as not merged away has been
    merged meanwhile (nothing of the transaction is then kept). Call it under the event
    table's lock, which holds what it checked until the commit."""
    curs.execute(_STILL_UNMERGED, (sorted(merges.unmerged),))
    merged = {row["customer_id"]: row["into_customer_id"] for row in curs.fetchall()}
    if merged:
        found = ", ".join(f"{k} -> {v}" for k, v in sorted(merged.items()))
        raise MergeConflict(
            f"expected {len(merges.unmerged)} customers not merged away, as when the merges "
            f"were checked; another writer merged {found} meanwhile"
        )


def insert_merges(curs: psycopg.Cursor[DictRow], rows: Sequence[MergeRow]) -> None:
    """Write merge rows at the positions of their events, inserted before in the same
    transaction (on a cursor of its own: `curs` may still hold the events' results)."""
    with curs.connection.cursor() as merge_curs:
        merge_curs.execute(
            _INSERT_MERGES,
            (
                [m.customer_id for m in rows],
                [m.into_customer_id for m in rows],
                [m.event_id for m in rows],
            ),
        )


def check_merge_writes(fresh: Sequence[Envelope], merges: MergeWrites) -> None:
    """MergeConflict unless the merge rows are exactly the new events of the merge type."""
    guarded = {e.event_id for e in fresh if e.type == merges.type}
    counted = {row.event_id for row in merges.rows}
    if guarded != counted:
        raise MergeConflict(
            f"expected the merge rows to be the {len(guarded)} new merge events, they are "
            f"{len(counted)} ({len(counted - guarded)} already recorded, "
            f"{len(guarded - counted)} unchecked)"
        )


def _stored_by_position(
    conn: psycopg.Connection[DictRow], type_: str
) -> Iterator[tuple[int, Envelope]]:
    """(position, envelope) of the stored events of `type_`, in position order (a server-side
    cursor)."""
    with conn.cursor(name="crm_merge_backfill") as cursor:
        cursor.execute(
            f"SELECT notification_id, state FROM {EVENTS_TABLE} WHERE topic = %s "
            "ORDER BY notification_id",
            (type_,),
        )
        for row in cursor:
            state = bytes(row["state"])
            yield row["notification_id"], decode(state, max_bytes=len(state))
