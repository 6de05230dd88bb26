"""The event store: one eventsourcing stream per customer in PostgreSQL, a global position for
every event, and the intake ledger (event ids seen, Kafka intake positions, the state of each
complaint case, the customer merges) written in the same transaction as the events it guards.
The complaint cases and the merges have modules of their own (infra/case_ledger.py,
infra/merge_ledger.py); the table names they share, infra/store_tables.py."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from eventsourcing.persistence import IntegrityError, Notification, StoredEvent, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow

from events import topics
from events.codec import encode
from events.envelope import Envelope
from infra.case_ledger import (
    CaseBackfill,
    CaseKey,
    CaseLedger,
    CaseWrite,
    CaseWrites,
    ComplaintState,
    check_case_writes,
    write_cases,
)
from infra.merge_ledger import (
    MergeBackfill,
    MergeLedger,
    MergeState,
    MergeWrites,
    check_merge_writes,
    check_still_unmerged,
    insert_merges,
)
from infra.store_tables import (
    EVENTS_TABLE,
    INTAKE_TABLE,
    RECORDED_IDS_SQL,
    SCHEMA_LOCK,
    TRACKING_TABLE,
)

_CONFLICT_RETRIES = 5
RELAY_TRACKING_PREFIX = f"relay:{topics.EVENTS}:"


def relay_tracking_name(topic_id: str | None, topic: str = topics.EVENTS) -> str:
    """Tracking name of the relay's last published position, per incarnation of a topic."""
    return f"relay:{topic}:{topic_id}"


@contextmanager
def notifications(dsn: str, channel: str) -> Iterator[Callable[[float], None]]:
    """A function that waits up to `timeout` s for the next NOTIFY on `channel`."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

        def wait(timeout: float) -> None:
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                pass

        yield wait


@dataclass(frozen=True, slots=True)
class IntakePosition:
    """The next Kafka offset to read on one partition of one incarnation of a topic.

    The topic id changes when a topic is recreated (the embedded broker restarts empty), so
    positions of an earlier incarnation never hide the messages of a new one.
    """

    topic: str
    topic_id: str
    partition: int
    next_offset: int

    @property
    def tracking_name(self) -> str:
        return f"intake:{self.topic}:{self.partition}:{self.topic_id}"


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    recorded: int
    duplicates: int


class _Recorder(PostgresProcessRecorder):
    """eventsourcing's process recorder, also writing intake rows and several trackings in
    the transaction that inserts the stored events."""

    def __init__(self, datastore: PostgresDatastore) -> None:
        super().__init__(
            datastore, events_table_name=EVENTS_TABLE, tracking_table_name=TRACKING_TABLE
        )
        self.sql_create_statements.append(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                "event_id uuid PRIMARY KEY, customer_id text NOT NULL, version bigint NOT NULL)"
            ).format(sql.Identifier(INTAKE_TABLE))
        )

    def _insert_events(
        self, curs: psycopg.Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        for tracking in kwargs.get("trackings", ()):
            self._insert_tracking(curs, tracking)
        cases: Sequence[CaseWrite] = kwargs.get("cases", ())
        if cases:
            write_cases(curs, cases)
        rows: list[tuple[str, str, int]] = kwargs.get("intake", [])
        if rows:
            ids, customers, versions = zip(*rows, strict=True)
            curs.execute(
                sql.SQL(
                    "INSERT INTO {} (event_id, customer_id, version) "
                    "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::bigint[])"
                ).format(sql.Identifier(INTAKE_TABLE)),
                (list(ids), list(customers), list(versions)),
            )
        merges: MergeWrites | None = kwargs.get("merges")
        if merges is not None and merges.rows:
            # Last, as the other writers take their locks (case rows, then the table): the
            # table lock serializes the writers of events, so what is checked here holds
            # until the commit, and merges take effect in the order of their positions.
            self._lock_table(curs)
            check_still_unmerged(curs, merges)
        super()._insert_events(curs, stored_events, **kwargs)

    def _insert_stored_events(
        self, curs: psycopg.Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        super()._insert_stored_events(curs, stored_events, **kwargs)
        merges: MergeWrites | None = kwargs.get("merges")
        if merges is not None and merges.rows:
            # After the events, for their positions; checked above, under the same lock. (Raise
            # nothing here: eventsourcing commits past a Python error at this point.)
            insert_merges(curs, merges.rows)


class EventStore:
    """Append-only customer streams with deduplication by event id."""

    def __init__(self, dsn: str, *, pool_size: int = 2) -> None:
        self.dsn = dsn
        params = conninfo_to_dict(dsn)
        self.datastore = PostgresDatastore(
            dbname=str(params.get("dbname", "postgres")),
            host=str(params.get("host", "127.0.0.1")),
            port=str(params.get("port", 5432)),
            user=str(params.get("user", "postgres")),
            password=str(params.get("password", "")),
            pool_size=pool_size,
            originator_id_type="text",
        )
        self.recorder = _Recorder(self.datastore)
        self.case_ledger = CaseLedger(dsn, self.datastore)
        self.merge_ledger = MergeLedger(dsn, self.datastore)

    def create_tables(self) -> None:
        """Create the tables if missing; safe when several processes start at once."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
            try:
                self.recorder.create_table()
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))

    def create_complaint_cases(self, types: Collection[str], backfill: CaseBackfill) -> int | None:
        """Create the complaint case table if missing, filled by `backfill` from the events of
        `types` already stored, in one transaction that holds off inserts into the event store
        meanwhile, so the table never misses an event. The number of cases written, or None
        when the table existed. Call `create_tables` first."""
        return self.case_ledger.create(types, backfill)

    def complaint_state(self, event_ids: list[str], keys: Collection[CaseKey]) -> ComplaintState:
        """The recorded ones among `event_ids`, and the recorded cases of `keys`. Nothing is
        known while the case table does not exist (no recorder has created it yet)."""
        return self.case_ledger.state(event_ids, keys)

    def create_customer_merges(self, type_: str, backfill: MergeBackfill) -> int | None:
        """Create the merge table if missing, filled by `backfill` from the events of `type_`
        already stored (in position order), in one transaction that holds off inserts into the
        event store meanwhile. The number of merges written, or None when the table existed.
        Call `create_tables` first."""
        return self.merge_ledger.create(type_, backfill)

    def merge_state(self, event_ids: list[str], customer_ids: Collection[str]) -> MergeState:
        """The recorded ones among `event_ids`, the recorded merges of `customer_ids` with the
        chains from them, and which of `customer_ids` have an event recorded. Nothing is known
        while the merge table does not exist (no recorder has created it yet)."""
        return self.merge_ledger.state(event_ids, customer_ids)

    def close(self) -> None:
        self.datastore.close()

    def record(
        self,
        envelopes: Sequence[Envelope],
        positions: Iterable[IntakePosition] = (),
        cases: CaseWrites | None = None,
        merges: MergeWrites | None = None,
    ) -> RecordOutcome:
        """Append each new envelope to its customer's stream, in the given order, with the
        next customer version; skip event ids already recorded; track `positions`; write the
        complaint `cases` and the `merges` the new events made; one transaction. A concurrent
        writer's conflict is resolved by reading again and retrying, except a CaseConflict or
        MergeConflict: `cases` or `merges` no longer fit (the caller checks the events again).
        Without `cases` (`merges`) the case (merge) table is not touched."""
        trackings = [Tracking(p.tracking_name, p.next_offset) for p in positions]
        for attempt in range(_CONFLICT_RETRIES):
            try:
                return self._try_record(envelopes, trackings, cases, merges)
            except (IntegrityError, psycopg.IntegrityError):
                if attempt == _CONFLICT_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _try_record(
        self,
        envelopes: Sequence[Envelope],
        trackings: list[Tracking],
        cases: CaseWrites | None,
        merges: MergeWrites | None,
    ) -> RecordOutcome:
        unique = {e.event_id: e for e in reversed(envelopes)}  # first occurrence wins
        known = self.known_event_ids(list(unique))
        fresh = [e for e in envelopes if e.event_id not in known and unique.get(e.event_id) is e]
        if cases is not None:
            check_case_writes(fresh, cases)
        if merges is not None:
            check_merge_writes(fresh, merges)
        versions = self.stream_versions({e.customer_id for e in fresh})
        stored: list[StoredEvent] = []
        intake: list[tuple[str, str, int]] = []
        for envelope in fresh:
            version = versions.get(envelope.customer_id, 0) + 1
            versions[envelope.customer_id] = version
            stored.append(
                StoredEvent(
                    originator_id=envelope.customer_id,
                    originator_version=version,
                    topic=envelope.type,
                    state=encode(envelope),
                )
            )
            intake.append((envelope.event_id, envelope.customer_id, version))
        if stored or trackings:
            writes = () if cases is None else cases.writes
            self.recorder.insert_events(
                stored, trackings=trackings, intake=intake, cases=writes, merges=merges
            )
        return RecordOutcome(recorded=len(stored), duplicates=len(envelopes) - len(stored))

    def known_event_ids(self, event_ids: list[str]) -> set[str]:
        if not event_ids:
            return set()
        rows = self._query(RECORDED_IDS_SQL, (event_ids,))
        return {row["id"] for row in rows}

    def stream_versions(self, customer_ids: set[str]) -> dict[str, int]:
        if not customer_ids:
            return {}
        rows = self._query(
            f"SELECT originator_id AS id, max(originator_version) AS version FROM {EVENTS_TABLE} "
            "WHERE originator_id = ANY(%s::text[]) GROUP BY originator_id",
            (list(customer_ids),),
        )
        return {row["id"]: row["version"] for row in rows}

    def intake_offset(self, topic: str, topic_id: str, partition: int) -> int | None:
        """The next offset to read on that partition of that topic incarnation, if tracked."""
        name = IntakePosition(topic, topic_id, partition, 0).tracking_name
        return self.recorder.max_tracking_id(name)

    def read(self, after: int, limit: int) -> Sequence[Notification]:
        """Events after global position `after`, in position order."""
        return self.recorder.select_notifications(after, limit, inclusive_of_start=False)

    def timeline(
        self, customer_id: str, *, limit: int, before: int | None = None
    ) -> list[tuple[int, int, bytes]]:
        """(version, position, state) of a customer's events, newest first, below `before`."""
        rows = self._query(
            f"SELECT originator_version AS v, notification_id AS p, state FROM {EVENTS_TABLE} "
            "WHERE originator_id = %s AND (%s::bigint IS NULL OR notification_id < %s::bigint) "
            "ORDER BY originator_version DESC LIMIT %s",
            (customer_id, before, before, limit),
        )
        return [(row["v"], row["p"], bytes(row["state"])) for row in rows]

    def max_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    def tracked(self, name: str) -> int | None:
        """The last position recorded under a tracking name (relay, projections)."""
        return self.recorder.max_tracking_id(name)

    def track(self, name: str, position: int) -> None:
        """Record a position under a tracking name; it must grow."""
        self.recorder.insert_tracking(Tracking(name, position))

    def new_events(self) -> AbstractContextManager[Callable[[float], None]]:
        """A function that waits up to `timeout` s for the next insert (LISTEN/NOTIFY)."""
        return notifications(self.dsn, self.recorder.channel_name)

    def count(self) -> int:
        return self._query(f"SELECT count(*) AS n FROM {EVENTS_TABLE}")[0]["n"]

    def _query(self, query: str, params: tuple[Any, ...] = ()) -> list[DictRow]:
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(query, params)
            return cursor.fetchall()
