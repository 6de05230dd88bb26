"""What the projector needs to know about a per-customer read model, and its SQL.

Each read model is one row per customer: the last applied customer version and global position,
and the view as JSONB. The fold is pure; the projector (services/projector.py) loads rows, folds
new events into them and writes them back with the positions, in one transaction.

Two optional shapes serve queries across customers, written in the same transaction:
- a view's `tables`: rows of their own kept from its state (one per complaint case, one per
  follow-up), with indexed columns;
- an `EventTable`: one row per recorded event, keyed by customer and version (a narrow index of
  the event store, for reports).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from projections.alerts import Alert
from projections.recorded import RecordedEvent

S = TypeVar("S")
PROGRESS_TABLE = "rm_progress"


@dataclass(frozen=True, slots=True)
class RowTable(Generic[S]):
    """Rows of their own kept from a view's state, for queries across customers.

    `rows(before, after)` returns the rows of what one customer's batch changed (`before`: the
    state the batch began with, None for a new customer), each a tuple in the column order of
    `upsert_sql`, which takes one array per column. The projector writes them in the transaction
    of the view's row, and only when that row was written (not when another instance's row was
    newer), so they are exactly as current as the view. The rows derive from the state alone:
    a replay rebuilds them identically."""

    name: str
    create_sql: str
    upsert_sql: str
    rows: Callable[[S | None, S], list[tuple[Any, ...]]]
    additive: bool = False
    """The rows are deltas added to shared counts (co-purchases), not absolute values: the
    projector then takes `before` from the stored row (locked) rather than from its cache, so a
    change is counted once even when its cache was stale."""

    @property
    def table(self) -> str:
        return f"rm_{self.name}"


@dataclass(frozen=True, slots=True)
class EventTable:
    """A read model of one row per recorded event, keyed by customer and version.

    `row(event)` gives the columns of `insert_sql` (one array per column), which keeps a row
    already there: an event delivered again, or applied again by a replay, is one row."""

    name: str
    create_sql: str
    insert_sql: str
    row: Callable[[RecordedEvent], tuple[Any, ...]]

    @property
    def table(self) -> str:
        return f"rm_{self.name}"


@dataclass(frozen=True, slots=True)
class EventIndex:
    """A read model of rows derived from single events of some `types` (the identifier index):
    `rows(events)` gives the rows of a batch, already merged per key, in key order, for
    `upsert_sql` (one array per column). The upsert must be idempotent and order-free (least /
    greatest of what it keeps), so a redelivered event, a replay or another projector's batch
    change nothing more. Events of other types cost it nothing."""

    name: str
    create_sql: str
    upsert_sql: str
    types: frozenset[str]
    rows: Callable[[Sequence[RecordedEvent]], list[tuple[Any, ...]]]

    @property
    def table(self) -> str:
        return f"rm_{self.name}"


@dataclass(frozen=True, slots=True)
class CustomerView(Generic[S]):
    """A read model keyed by customer: `apply` folds one event into the state (None at first).

    `alerts(before, after, now)`, if given, returns the alerts that one event raises, changing
    the state from `before` to `after`; the projector logs them in the transaction that writes
    the change. `ended(before, after)`, if given, returns the ids of the alerts whose episode the
    event ended; the projector marks them resolved in the same transaction.

    `types`, if given, makes the view sparse: only events of these types can change its state, so
    the projector hands it only those and keeps a row only for customers who had one. The row's
    version is then the customer version of the last such event, `apply` must take an event
    whose version skips the customer's other events, and a gap is filled from the event store
    with the events of these types only. Most events concern none of these views: they cost them
    nothing. `tables` are the view's `RowTable`s."""

    name: str
    apply: Callable[[S | None, RecordedEvent], S]
    to_json: Callable[[S], dict[str, Any]]
    from_json: Callable[[dict[str, Any]], S]
    alerts: Callable[[S | None, S, datetime], list[Alert]] | None = None
    ended: Callable[[S | None, S], list[str]] | None = None
    types: frozenset[str] | None = None
    tables: tuple[RowTable[S], ...] = ()

    @property
    def table(self) -> str:
        return f"rm_{self.name}"

    def create_sql(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            "customer_id text PRIMARY KEY, version bigint NOT NULL, position bigint NOT NULL, "
            "doc jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
        )

    def select_many_sql(self) -> str:
        return (
            f"SELECT customer_id, version, position, doc FROM {self.table} "
            "WHERE customer_id = ANY(%s::text[])"
        )

    def upsert_sql(self) -> str:
        """Write views; a row already at a higher version (another instance) is kept. A view
        with `tables` returns the customer ids it wrote: their rows follow.

        Binary parameters (%b): no text escaping of the JSON documents."""
        return (
            f"INSERT INTO {self.table} AS t (customer_id, version, position, doc) "
            "SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::jsonb[]) "
            "ON CONFLICT (customer_id) DO UPDATE SET version = excluded.version, "
            "position = excluded.position, doc = excluded.doc, updated_at = now() "
            "WHERE t.version < excluded.version" + (" RETURNING customer_id" if self.tables else "")
        )

    def select_sql(self) -> str:
        return f"SELECT version, position, doc FROM {self.table} WHERE customer_id = %s"


PROGRESS_SQL = (
    f"CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} ("
    "name text PRIMARY KEY, position bigint NOT NULL, updated_at timestamptz NOT NULL)"
)
ADVANCE_PROGRESS_SQL = (
    f"INSERT INTO {PROGRESS_TABLE} AS p (name, position, updated_at) VALUES (%s, %s, now()) "
    "ON CONFLICT (name) DO UPDATE SET position = GREATEST(p.position, excluded.position), "
    "updated_at = now()"
)
