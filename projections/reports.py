"""Reports for management: complaints and touchpoints over a time range, grouped. Pure.

**Complaints** (`complaint_report`): the complaints *filed* in [start, end), as they stand at
`now`, grouped by category, product_sku or severity:
- `filed`, `resolved` (resolved now), `open` (open now, reopened ones included);
- `median_time_to_resolve`: over the resolved ones, from filing to their last resolution (a
  reopened case is resolved for good only then); None when none is resolved;
- `breached`: the complaints of which some episode was open at its deadline by `now`; the
  `breach_rate` is breached / filed (4 decimals).

**Touchpoints** (`touchpoint_report`): the events that *occurred* in [start, end), grouped by
type, source or UTC month of `occurred_at`: how many, and of how many distinct customers.

Groups come sorted by key; complaints without a product_sku form the group whose key is None,
last. The JSON gives durations in hours (2 decimals) and rates as decimal strings.

The API computes the same figures in PostgreSQL (`complaint_report_sql`, `touchpoint_report_sql`)
over the complaint cases (rm_complaint_cases) and the touchpoint index (`TOUCHPOINTS`, one narrow
row per recorded event), and builds the `Report` from the rows (`report_from_rows`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from events.envelope import Envelope
from projections.complaints import CASES_TABLE, ComplaintCase, ever_breached
from projections.desertion import month_of
from projections.recorded import RecordedEvent, rfc3339
from projections.views import EventTable

ComplaintGrouping = Literal["category", "product_sku", "severity"]
TouchpointGrouping = Literal["type", "source", "month"]

_RATE = Decimal("0.0001")
_HUNDREDTH = Decimal("0.01")
_HOUR_US = timedelta(hours=1) // timedelta(microseconds=1)

_COMPLAINT_KEYS: dict[str, Callable[[ComplaintCase], str | None]] = {
    "category": lambda case: case.category,
    "product_sku": lambda case: case.product_sku,
    "severity": lambda case: case.severity,
}
_TOUCHPOINT_KEYS: dict[str, Callable[[Envelope], str]] = {
    "type": lambda envelope: envelope.type,
    "source": lambda envelope: envelope.source,
    "month": lambda envelope: month_of(envelope.occurred_at),
}


@dataclass(frozen=True, slots=True)
class ComplaintGroup:
    key: str | None
    filed: int
    resolved: int
    open: int
    breached: int
    median_time_to_resolve: timedelta | None

    @property
    def breach_rate(self) -> Decimal:
        return (Decimal(self.breached) / Decimal(self.filed)).quantize(_RATE, ROUND_HALF_EVEN)

    def to_json(self) -> dict[str, Any]:
        median = self.median_time_to_resolve
        return {
            "key": self.key,
            "filed": self.filed,
            "resolved": self.resolved,
            "open": self.open,
            "breached": self.breached,
            "breach_rate": f"{self.breach_rate:f}",
            "median_hours_to_resolve": None if median is None else _hours(median),
        }


@dataclass(frozen=True, slots=True)
class TouchpointGroup:
    key: str
    count: int
    customers: int

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "count": self.count, "customers": self.customers}


@dataclass(frozen=True, slots=True)
class Report:
    """One report: its range and grouping, and the groups (`ComplaintGroup`s or
    `TouchpointGroup`s)."""

    start: datetime
    end: datetime
    group_by: str
    groups: tuple[ComplaintGroup, ...] | tuple[TouchpointGroup, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "from": rfc3339(self.start),
            "to": rfc3339(self.end),
            "group_by": self.group_by,
            "groups": [group.to_json() for group in self.groups],
        }


def complaint_report(
    cases: Iterable[ComplaintCase],
    *,
    start: datetime,
    end: datetime,
    group_by: ComplaintGrouping,
    now: datetime,
) -> Report:
    """The complaint report (rules in the module docstring)."""
    check_range(start, end)
    key_of = _grouping(_COMPLAINT_KEYS, group_by)
    grouped: dict[str | None, list[ComplaintCase]] = defaultdict(list)
    for case in cases:
        if start <= case.filed_at < end:
            grouped[key_of(case)].append(case)
    groups = tuple(_complaint_group(k, grouped[k], now) for k in sorted(grouped, key=_key_order))
    return Report(start, end, group_by, groups)


def _complaint_group(key: str | None, cases: list[ComplaintCase], now: datetime) -> ComplaintGroup:
    resolved = [c for c in cases if not c.is_open]
    times = [c.resolved_at - c.filed_at for c in resolved if c.resolved_at is not None]
    return ComplaintGroup(
        key=key,
        filed=len(cases),
        resolved=len(resolved),
        open=len(cases) - len(resolved),
        breached=sum(ever_breached(c, now) for c in cases),
        median_time_to_resolve=median(times),
    )


def touchpoint_report(
    events: Iterable[Envelope], *, start: datetime, end: datetime, group_by: TouchpointGrouping
) -> Report:
    """The touchpoint report (rules in the module docstring)."""
    check_range(start, end)
    key_of = _grouping(_TOUCHPOINT_KEYS, group_by)
    counts: dict[str, int] = defaultdict(int)
    customers: dict[str, set[str]] = defaultdict(set)
    for envelope in events:
        if start <= envelope.occurred_at < end:
            key = key_of(envelope)
            counts[key] += 1
            customers[key].add(envelope.customer_id)
    groups = tuple(TouchpointGroup(k, counts[k], len(customers[k])) for k in sorted(counts))
    return Report(start, end, group_by, groups)


def median(durations: list[timedelta]) -> timedelta | None:
    """The middle duration; the mean of the two middle ones for an even count; None if empty."""
    if not durations:
        return None
    ordered = sorted(durations)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _hours(duration: timedelta) -> str:
    hours = Decimal(duration // timedelta(microseconds=1)) / Decimal(_HOUR_US)
    return f"{hours.quantize(_HUNDREDTH, ROUND_HALF_EVEN):f}"


def _grouping(keys: dict[str, Callable[[Any], Any]], group_by: str) -> Callable[[Any], Any]:
    try:
        return keys[group_by]
    except KeyError:
        raise ValueError(f"group_by must be one of {', '.join(keys)}, got {group_by!r}") from None


def check_range(start: datetime, end: datetime) -> None:
    """ValueError unless both are aware and `start` is before `end`."""
    if start.utcoffset() is None or end.utcoffset() is None:
        raise ValueError("from and to must be timezone-aware")
    if start >= end:
        raise ValueError(f"from must be before to, got {rfc3339(start)} and {rfc3339(end)}")


def _key_order(key: str | None) -> tuple[bool, str]:
    return key is None, key or ""


# --- the reports in PostgreSQL ------------------------------------------------------------------

TOUCHPOINTS_TABLE = "rm_touchpoints"
CREATE_TOUCHPOINTS_SQL = f"""
CREATE TABLE IF NOT EXISTS {TOUCHPOINTS_TABLE} (
    customer_id text NOT NULL, version bigint NOT NULL, position bigint NOT NULL,
    type text NOT NULL, source text NOT NULL, occurred_at timestamptz NOT NULL,
    PRIMARY KEY (customer_id, version));
CREATE INDEX IF NOT EXISTS {TOUCHPOINTS_TABLE}_occurred ON {TOUCHPOINTS_TABLE} (occurred_at)
"""
INSERT_TOUCHPOINTS_SQL = (
    f"INSERT INTO {TOUCHPOINTS_TABLE} (customer_id, version, position, type, source, occurred_at) "
    "SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::text[], %b::text[], "
    "%b::timestamptz[]) ON CONFLICT (customer_id, version) DO NOTHING"
)


def touchpoint_row(event: RecordedEvent) -> tuple[Any, ...]:
    e = event.envelope
    return e.customer_id, event.version, event.position, e.type, e.source, e.occurred_at


TOUCHPOINTS = EventTable(
    "touchpoints", CREATE_TOUCHPOINTS_SQL, INSERT_TOUCHPOINTS_SQL, touchpoint_row
)
"""Every recorded event's type, source and business time, keyed by customer and version (one
event: one row, however often it is delivered), with its global position."""

_COMPLAINT_COLUMNS = {"category": "category", "product_sku": "product_sku", "severity": "severity"}
_TOUCHPOINT_COLUMNS = {
    "type": "type",
    "source": "source",
    "month": "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM')",
}


def complaint_report_sql(group_by: str) -> str:
    """Rows (key, filed, resolved, open, breached, median time to resolve) of the complaint
    report; parameters `start`, `end`, `now`."""
    key = _grouping(_COMPLAINT_COLUMNS, group_by)
    return (
        f"SELECT {key}, count(*), count(*) FILTER (WHERE status = 'resolved'), "
        "count(*) FILTER (WHERE status = 'open'), "
        "count(*) FILTER (WHERE late_episodes > 0 OR (status = 'open' AND due_at <= %(now)s)), "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY resolved_at - filed_at) "
        "FILTER (WHERE status = 'resolved') "
        f"FROM {CASES_TABLE} WHERE filed_at >= %(start)s AND filed_at < %(end)s GROUP BY 1"
    )


def touchpoint_report_sql(group_by: str) -> str:
    """Rows (key, count, customers) of the touchpoint report; parameters `start`, `end`."""
    key = _grouping(_TOUCHPOINT_COLUMNS, group_by)
    return (
        f"SELECT {key}, count(*), count(DISTINCT customer_id) FROM {TOUCHPOINTS_TABLE} "
        "WHERE occurred_at >= %(start)s AND occurred_at < %(end)s GROUP BY 1"
    )


def report_from_rows(
    kind: Literal["complaints", "touchpoints"],
    rows: Iterable[tuple[Any, ...]],
    *,
    start: datetime,
    end: datetime,
    group_by: str,
) -> Report:
    """The report of the rows of `complaint_report_sql` or `touchpoint_report_sql`, groups
    sorted by key as the pure reports sort them (not by the database's collation)."""
    check_range(start, end)
    ordered = sorted(rows, key=lambda row: _key_order(row[0]))
    groups: tuple[ComplaintGroup, ...] | tuple[TouchpointGroup, ...]
    if kind == "complaints":
        groups = tuple(ComplaintGroup(*row) for row in ordered)
    else:
        groups = tuple(TouchpointGroup(*row) for row in ordered)
    return Report(start, end, group_by, groups)


def groupings(kind: Literal["complaints", "touchpoints"]) -> tuple[str, ...]:
    """The `group_by` values a report takes."""
    return tuple(_COMPLAINT_COLUMNS if kind == "complaints" else _TOUCHPOINT_COLUMNS)
