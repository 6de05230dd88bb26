"""The event store: one eventsourcing stream per customer in PostgreSQL, a global position for
every event, and the intake ledger (event ids seen, Kafka intake positions, the state of each
complaint case, the customer merges) written in the same transaction as the events it guards."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import psycopg
from eventsourcing.persistence import IntegrityError, Notification, StoredEvent, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

from events import topics
from events.codec import decode, encode
from events.envelope import Envelope

EVENTS_TABLE = "crm_events"
TRACKING_TABLE = "crm_tracking"
INTAKE_TABLE = "crm_intake"
COMPLAINT_CASES_TABLE = "crm_complaint_cases"
CUSTOMER_MERGES_TABLE = "crm_customer_merges"
_CONFLICT_RETRIES = 5
SCHEMA_LOCK = 7_310_001  # advisory lock id serializing schema changes
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
_BACKFILL_CHUNK = 1000
_Row = TypeVar("_Row")


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
            _write_cases(curs, cases)
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
            _check_still_unmerged(curs, merges)
        super()._insert_events(curs, stored_events, **kwargs)

    def _insert_stored_events(
        self, curs: psycopg.Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        super()._insert_stored_events(curs, stored_events, **kwargs)
        merges: MergeWrites | None = kwargs.get("merges")
        if merges is not None and merges.rows:
            # After the events, for their positions; checked above, under the same lock. (Raise
            # nothing here: eventsourcing commits past a Python error at this point.)
            with curs.connection.cursor() as merge_curs:
                merge_curs.execute(
                    _INSERT_MERGES,
                    (
                        [m.customer_id for m in merges.rows],
                        [m.into_customer_id for m in merges.rows],
                        [m.event_id for m in merges.rows],
                    ),
                )


def _write_cases(curs: psycopg.Cursor[DictRow], cases: Sequence[CaseWrite]) -> None:
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


def _check_still_unmerged(curs: psycopg.Cursor[DictRow], merges: MergeWrites) -> None:
    """MergeConflict when a customer the merges were checked as not merged away has been
    merged meanwhile (nothing of the transaction is then kept)."""
    curs.execute(_STILL_UNMERGED, (sorted(merges.unmerged),))
    merged = {row["customer_id"]: row["into_customer_id"] for row in curs.fetchall()}
    if merged:
        found = ", ".join(f"{k} -> {v}" for k, v in sorted(merged.items()))
        raise MergeConflict(
            f"expected {len(merges.unmerged)} customers not merged away, as when the merges "
            f"were checked; another writer merged {found} meanwhile"
        )


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
        self._cases_exist = False
        self._merges_exist = False

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
        if self._complaint_cases_exist():
            return None
        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:  # one transaction
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            if _table_exists(conn, COMPLAINT_CASES_TABLE):
                return None
            conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(EVENTS_TABLE))
            )
            conn.execute(_CREATE_CASES)
            written = 0
            with conn.cursor() as curs:
                for chunk in _chunks(backfill(_stored_envelopes(conn, types)), _BACKFILL_CHUNK):
                    _write_cases(curs, chunk)
                    written += len(chunk)
        self._cases_exist = True
        return written

    def complaint_state(self, event_ids: list[str], keys: Collection[CaseKey]) -> ComplaintState:
        """The recorded ones among `event_ids`, and the recorded cases of `keys` (one
        connection, two indexed lookups). Nothing is known while the case table does not exist
        (no recorder has created it yet)."""
        if not self._complaint_cases_exist():
            return ComplaintState(set(), {})
        customers, complaints = [k[0] for k in keys], [k[1] for k in keys]
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(
                f"SELECT event_id::text AS id FROM {INTAKE_TABLE} WHERE event_id = ANY(%s::uuid[])",
                (event_ids,),
            )
            known = {row["id"] for row in cursor.fetchall()}
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

    def create_customer_merges(self, type_: str, backfill: MergeBackfill) -> int | None:
        """Create the merge table if missing, filled by `backfill` from the events of `type_`
        already stored (in position order), in one transaction that holds off inserts into the
        event store meanwhile. The number of merges written, or None when the table existed.
        Call `create_tables` first."""
        if self._customer_merges_exist():
            return None
        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:  # one transaction
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            if _table_exists(conn, CUSTOMER_MERGES_TABLE):
                return None
            conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(EVENTS_TABLE))
            )
            conn.execute(_CREATE_MERGES)
            written = 0
            with conn.cursor() as curs:
                for chunk in _chunks(backfill(_stored_by_position(conn, type_)), _BACKFILL_CHUNK):
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
        self._merges_exist = True
        return written

    def merge_state(self, event_ids: list[str], customer_ids: Collection[str]) -> MergeState:
        """The recorded ones among `event_ids`, the recorded merges of `customer_ids` with the
        chains from them, and which of `customer_ids` have an event recorded (one connection,
        three indexed lookups). Nothing is known while the merge table does not exist (no
        recorder has created it yet)."""
        if not self._customer_merges_exist():
            return MergeState(set(), {}, None)
        customers = sorted(customer_ids)
        with self.datastore.get_connection() as conn, conn.cursor() as cursor:
            cursor.execute(
                f"SELECT event_id::text AS id FROM {INTAKE_TABLE} WHERE event_id = ANY(%s::uuid[])",
                (event_ids,),
            )
            known = {row["id"] for row in cursor.fetchall()}
            cursor.execute(_MERGE_CHAINS, (customers,))
            merged_into = {row["customer_id"]: row["into_customer_id"] for row in cursor}
            cursor.execute(
                f"SELECT k.id FROM unnest(%s::text[]) AS k(id) WHERE EXISTS "
                f"(SELECT 1 FROM {EVENTS_TABLE} e WHERE e.originator_id = k.id)",
                (customers,),
            )
            with_events = {row["id"] for row in cursor.fetchall()}
        return MergeState(known, merged_into, with_events)

    def _customer_merges_exist(self) -> bool:
        if not self._merges_exist:
            with self.datastore.get_connection() as conn:
                self._merges_exist = _table_exists(conn, CUSTOMER_MERGES_TABLE)
        return self._merges_exist

    def _complaint_cases_exist(self) -> bool:
        if not self._cases_exist:
            with self.datastore.get_connection() as conn:
                self._cases_exist = _table_exists(conn, COMPLAINT_CASES_TABLE)
        return self._cases_exist

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
            _check_case_writes(fresh, cases)
        if merges is not None:
            _check_merge_writes(fresh, merges)
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
        rows = self._query(
            f"SELECT event_id::text AS id FROM {INTAKE_TABLE} WHERE event_id = ANY(%s::uuid[])",
            (event_ids,),
        )
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


def _check_case_writes(fresh: Sequence[Envelope], cases: CaseWrites) -> None:
    """CaseConflict unless the case writes count exactly the new events of the guarded types."""
    guarded = {e.event_id for e in fresh if e.type in cases.types}
    counted = {event_id for write in cases.writes for event_id in write.event_ids}
    if guarded != counted:
        raise CaseConflict(
            f"expected the case writes to count the {len(guarded)} new complaint events, they "
            f"count {len(counted)} ({len(counted - guarded)} already recorded, "
            f"{len(guarded - counted)} unchecked)"
        )


def _check_merge_writes(fresh: Sequence[Envelope], merges: MergeWrites) -> None:
    """MergeConflict unless the merge rows are exactly the new events of the merge type."""
    guarded = {e.event_id for e in fresh if e.type == merges.type}
    counted = {row.event_id for row in merges.rows}
    if guarded != counted:
        raise MergeConflict(
            f"expected the merge rows to be the {len(guarded)} new merge events, they are "
            f"{len(counted)} ({len(counted - guarded)} already recorded, "
            f"{len(guarded - counted)} unchecked)"
        )


def _table_exists(conn: psycopg.Connection[DictRow], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL AS found", (table,)).fetchone()
    assert row is not None
    return bool(row["found"])


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


def _chunks(items: Iterable[_Row], size: int) -> Iterator[list[_Row]]:
    chunk: list[_Row] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
