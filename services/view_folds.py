"""How the projector folds one batch into one read model, then writes it inside the batch's
transaction (services/projector.py): load the rows of the customers it has not cached, fold each
customer's new events (filling gaps from the event store); then write the rows that moved on,
and the view's own tables (`RowTable`) from the states of the customers whose row was written.
The fold of a batch may run while the batch before it is being written: it starts from that
batch's states (staged in the cache), and it gives the event loop a turn every few milliseconds
so that the write goes on meanwhile.

A dense view (`types` None) folds every event. A sparse view folds only the event types it names:
customers without such an event in the batch cost it nothing, and its gaps are filled with those
types only, in one query for the whole batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from infra.eventstore import EVENTS_TABLE
from projections.alerts import Alert
from projections.recorded import RecordedEvent, from_store
from projections.views import CustomerView, EventIndex, EventTable

log = logging.getLogger("crm.projector")

Change = tuple[Any, Any]
"""One customer's view state before a batch (None: new) and after it."""


class Folded(NamedTuple):
    """A customer's view state, with the customer version and global position it has applied."""

    version: int
    position: int
    state: Any


NEW = Folded(0, 0, None)
TURN_EVERY_S = 0.002


class ViewCache:
    """The folded views of the customers seen last, at most `size` of them (least recent out),
    and those of the batches folded but not committed yet (staged, newest first), whatever
    the size: the next batch folds on from them while they are written."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[str, Folded] = {}
        self._staged: deque[dict[str, Folded]] = deque()

    def __contains__(self, customer_id: str) -> bool:
        return customer_id in self._entries or any(customer_id in s for s in self._staged)

    def get(self, customer_id: str) -> Folded | None:
        for staged in reversed(self._staged):
            if customer_id in staged:
                return staged[customer_id]
        entry = self._entries.pop(customer_id, None)
        if entry is not None:
            self._entries[customer_id] = entry  # now the most recent
        return entry

    def stage(self, entries: dict[str, Folded]) -> None:
        """Hold a batch's folded views until it is committed or discarded."""
        self._staged.append(entries)

    def commit(self) -> None:
        """The oldest staged batch is committed: keep its views."""
        self.update(self._staged.popleft())

    def discard(self) -> None:
        """A staged batch failed: drop it and the ones folded on from it."""
        self._staged.clear()

    def update(self, entries: dict[str, Folded]) -> None:
        for customer_id, entry in entries.items():
            self._entries.pop(customer_id, None)
            self._entries[customer_id] = entry
        while len(self._entries) > self.size:
            del self._entries[next(iter(self._entries))]


class Turns:
    """Gives the event loop a turn once every `every_s` of a long fold."""

    def __init__(self, every_s: float = TURN_EVERY_S) -> None:
        self.every_s = every_s
        self._due = time.perf_counter() + every_s

    async def take(self) -> None:
        if time.perf_counter() >= self._due:
            await asyncio.sleep(0)
            self._due = time.perf_counter() + self.every_s


class ViewFold(NamedTuple):
    """A batch folded into one view: the customers' new states, and where each began."""

    view: CustomerView[Any]
    folded: dict[str, Folded]
    begun: dict[str, Folded]


async def fold_view(
    conn: AsyncConnection[Any],
    view: CustomerView[Any],
    cache: ViewCache,
    by_customer: dict[str, list[RecordedEvent]],
    now: datetime,
    alerts: list[Alert],
    ended: list[str],
    filled: list[RecordedEvent],
    turns: Turns,
) -> ViewFold:
    """Fold each customer's events into a dense view (`begun` only if it has tables).

    The alerts the changes raise are appended to `alerts`, the ids of those they end to `ended`,
    the events read from the event store to fill gaps to `filled`."""
    stored = await _load(conn, view, [c for c in by_customer if c not in cache])
    folded: dict[str, Folded] = {}
    begun: dict[str, Any] = {}
    for customer_id, customer_events in by_customer.items():
        await turns.take()
        start = cache.get(customer_id) or stored.get(customer_id) or NEW
        version, position, state = start
        for event in sorted(customer_events, key=lambda e: e.version):
            if event.version <= version:
                continue  # already applied
            missing = []
            if event.version > version + 1:
                missing = await read_gap(conn, customer_id, version, event.version)
                filled.extend(missing)
            for step in (*missing, event):
                before, state = state, view.apply(state, step)
                if view.alerts is not None:  # event by event: batch boundaries change nothing
                    alerts.extend(view.alerts(before, state, now))
                if view.ended is not None:
                    ended.extend(view.ended(before, state))
            version, position = event.version, event.position
        if version > start.version:
            folded[customer_id] = Folded(version, position, state)
            if view.tables:
                begun[customer_id] = start
    return ViewFold(view, folded, begun)


async def fold_sparse_view(
    conn: AsyncConnection[Any],
    view: CustomerView[Any],
    cache: ViewCache,
    by_customer: dict[str, list[RecordedEvent]],
    now: datetime,
    alerts: list[Alert],
    ended: list[str],
    filled: list[RecordedEvent],
    turns: Turns,
) -> ViewFold:
    """`fold_view` for a sparse view: only the customers with an event of its types, only
    those events, the gaps of the whole batch filled in one query (`filled` is left alone: the
    dense views fill the same gaps with every event)."""
    types = view.types or frozenset()
    own: dict[str, list[RecordedEvent]] = {}
    for customer_id, customer_events in by_customer.items():
        mine = [e for e in customer_events if e.envelope.type in types]
        if mine:
            own[customer_id] = mine
    if not own:
        return ViewFold(view, {}, {})
    stored = await _load(conn, view, [c for c in own if c not in cache])
    starts = {c: cache.get(c) or stored.get(c) or NEW for c in own}
    holes = {}
    for customer_id, mine in own.items():
        after, top = starts[customer_id].version, max(e.version for e in mine)
        if top > after and not _covered(by_customer[customer_id], after, top):
            holes[customer_id] = (after, top)
    gaps = await _read_own_gaps(conn, holes, types, by_customer)
    folded: dict[str, Folded] = {}
    begun: dict[str, Any] = {}
    for customer_id, mine in own.items():
        await turns.take()
        start = starts[customer_id]
        version, position, state = start
        steps = {e.version: e for e in gaps.get(customer_id, ())} | {e.version: e for e in mine}
        for step_version in sorted(steps):
            if step_version <= version:
                continue  # already applied
            event = steps[step_version]
            before, state = state, view.apply(state, event)
            if view.alerts is not None:
                alerts.extend(view.alerts(before, state, now))
            if view.ended is not None:
                ended.extend(view.ended(before, state))
            version, position = step_version, event.position
        if version > start.version:
            folded[customer_id] = Folded(version, position, state)
            begun[customer_id] = start
    return ViewFold(view, folded, begun)


def _covered(events: list[RecordedEvent], after: int, top: int) -> bool:
    """Whether the batch holds every version of the customer between `after` and `top`."""
    return len({e.version for e in events if after < e.version < top}) == top - after - 1


async def write_view(conn: AsyncConnection[Any], fold: ViewFold) -> list[Change]:
    """Write the view's rows; then, for a view with tables, their rows for the customers whose
    row was written (not kept by a higher version). Returns those customers' changes."""
    view, folded, begun = fold
    if not folded:
        return []
    if any(table.additive for table in view.tables):
        begun = await _stored_starts(conn, view, folded, begun)
    rows = folded.values()
    cursor = await conn.execute(
        view.upsert_sql(),
        (
            list(folded),
            [row.version for row in rows],
            [row.position for row in rows],
            [Jsonb(view.to_json(row.state), dumps=orjson.dumps) for row in rows],
        ),
    )
    if not view.tables:
        return []
    changes = [(begun[c].state, folded[c].state) for (c,) in await cursor.fetchall()]
    for table in view.tables:
        table_rows = [row for before, after in changes for row in table.rows(before, after)]
        if table_rows:
            columns = [list(column) for column in zip(*table_rows, strict=True)]
            await conn.execute(table.upsert_sql, columns)
    return changes


async def _stored_starts(
    conn: AsyncConnection[Any],
    view: CustomerView[Any],
    folded: dict[str, Folded],
    begun: dict[str, Folded],
) -> dict[str, Folded]:
    """For a view with additive tables: lock the customers' rows and take the stored state as
    where the batch began wherever it differs from the cached one (another projector moved the
    row on during a rebalance), so that the deltas count each change once. One query; the
    documents are read only for such customers (rare)."""
    cursor = await conn.execute(
        f"SELECT customer_id, version FROM {view.table} WHERE customer_id = ANY(%s::text[]) "
        "ORDER BY customer_id FOR UPDATE",
        (sorted(folded),),
    )
    stored = dict(await cursor.fetchall())
    stale = [c for c in folded if stored.get(c, 0) != begun[c].version]
    if not stale:
        return begun
    log.warning("event=stale_start view=%s customers=%d", view.name, len(stale))
    reloaded = await _load(conn, view, stale)
    return begun | {c: reloaded.get(c, NEW) for c in stale}


async def insert_event_rows(
    conn: AsyncConnection[Any], table: EventTable, events: Sequence[RecordedEvent]
) -> None:
    """Insert a row per event into an event table (those already there are kept)."""
    if events:
        rows = [table.row(event) for event in events]
        await conn.execute(table.insert_sql, [list(column) for column in zip(*rows, strict=True)])


async def upsert_index_rows(
    conn: AsyncConnection[Any], index: EventIndex, events: Sequence[RecordedEvent]
) -> None:
    """Upsert an event index's rows for a batch (nothing for a batch without its types)."""
    rows = index.rows([e for e in events if e.envelope.type in index.types])
    if rows:
        await conn.execute(index.upsert_sql, [list(column) for column in zip(*rows, strict=True)])


async def _load(
    conn: AsyncConnection[Any], view: CustomerView[Any], customer_ids: list[str]
) -> dict[str, Folded]:
    if not customer_ids:
        return {}
    cursor = await conn.execute(view.select_many_sql(), (customer_ids,))
    rows = await cursor.fetchall()
    return {c: Folded(version, position, view.from_json(doc)) for c, version, position, doc in rows}


async def read_gap(
    conn: AsyncConnection[Any], customer_id: str, after: int, before: int
) -> list[RecordedEvent]:
    """Events of a customer the stream skipped (lost by the broker), from the event store."""
    cursor = await conn.execute(
        f"SELECT originator_version, notification_id, state FROM {EVENTS_TABLE} "
        "WHERE originator_id = %s AND originator_version > %s AND originator_version < %s "
        "ORDER BY originator_version",
        (customer_id, after, before),
    )
    gap = [from_store(bytes(s), position=p, version=v) for v, p, s in await cursor.fetchall()]
    log.warning("event=gap_filled customer_id=%s after=%d before=%d filled=%d",
                customer_id, after, before, len(gap))  # fmt: skip
    return gap


_OWN_GAPS_SQL = (
    "SELECT e.originator_id, e.originator_version, e.notification_id, e.state "
    "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS g(customer_id, after, before) "
    f"JOIN {EVENTS_TABLE} e ON e.originator_id = g.customer_id "
    "AND e.originator_version > g.after AND e.originator_version < g.before "
    "WHERE e.topic = ANY(%s::text[]) ORDER BY 1, 2"
)
"""The events of the given types between two versions of each customer (topic = event type)."""


async def _read_own_gaps(
    conn: AsyncConnection[Any],
    holes: dict[str, tuple[int, int]],
    types: frozenset[str],
    by_customer: dict[str, list[RecordedEvent]],
) -> dict[str, list[RecordedEvent]]:
    """For each customer, the events of `types` the event store has between the two versions;
    usually only those of the batch itself (the others were applied before)."""
    if not holes:
        return {}
    ranges = list(holes.items())
    cursor = await conn.execute(
        _OWN_GAPS_SQL,
        ([c for c, _ in ranges], [a for _, (a, _) in ranges], [b for _, (_, b) in ranges],
         sorted(types)),
    )  # fmt: skip
    found: dict[str, list[RecordedEvent]] = {}
    lost = 0
    for customer_id, version, position, state in await cursor.fetchall():
        found.setdefault(customer_id, []).append(
            from_store(bytes(state), position=position, version=version)
        )
        lost += all(e.version != version for e in by_customer[customer_id])
    if lost:
        log.warning("event=gap_filled view_types=%s customers=%d filled=%d",
                    ",".join(sorted(types)), len(holes), lost)  # fmt: skip
    return found
