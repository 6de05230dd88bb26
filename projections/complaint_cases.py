"""Complaint cases as table rows. rm_complaint_cases (`CASES_TABLE`): one row per case, for
queries across customers (GET /complaints, reports, the clock), written by the projector with
the complaints view (`COMPLAINT_CASES`). crm_complaint_cases (infra/case_ledger.py): the
recorder's write-side state of each case (`case_state`). The cases themselves, their rules and
their JSON are projections/complaints.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from projections.complaints import (
    CASES_TABLE,
    ComplaintCase,
    CustomerComplaints,
    case_to_json,
    late_episodes,
)
from projections.views import RowTable

CREATE_CASES_SQL = f"""
CREATE TABLE IF NOT EXISTS {CASES_TABLE} (
    customer_id text NOT NULL, complaint_id text NOT NULL, status text NOT NULL, assignee text,
    product_sku text, severity text NOT NULL, category text NOT NULL, episode int NOT NULL,
    filed_at timestamptz NOT NULL, opened_at timestamptz NOT NULL, due_at timestamptz NOT NULL,
    resolved_at timestamptz, satisfied boolean, late_episodes int NOT NULL, doc jsonb NOT NULL,
    alerted_episode int NOT NULL DEFAULT 0,
    PRIMARY KEY (customer_id, complaint_id));
CREATE INDEX IF NOT EXISTS {CASES_TABLE}_filed
    ON {CASES_TABLE} (filed_at, customer_id, complaint_id);
CREATE INDEX IF NOT EXISTS {CASES_TABLE}_status ON {CASES_TABLE} (status, filed_at);
CREATE INDEX IF NOT EXISTS {CASES_TABLE}_assignee ON {CASES_TABLE} (assignee, filed_at);
CREATE INDEX IF NOT EXISTS {CASES_TABLE}_product ON {CASES_TABLE} (product_sku, filed_at);
CREATE INDEX IF NOT EXISTS {CASES_TABLE}_severity ON {CASES_TABLE} (severity, filed_at);
CREATE INDEX IF NOT EXISTS {CASES_TABLE}_category ON {CASES_TABLE} (category, filed_at);
CREATE INDEX IF NOT EXISTS {CASES_TABLE}_resolved ON {CASES_TABLE} (resolved_at);
CREATE INDEX IF NOT EXISTS {CASES_TABLE}_complaint ON {CASES_TABLE} (complaint_id);
CREATE INDEX IF NOT EXISTS {CASES_TABLE}_open_due ON {CASES_TABLE} (due_at) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS {CASES_TABLE}_unalerted ON {CASES_TABLE} (due_at)
    WHERE status = 'open' AND alerted_episode < episode
"""
"""One row per case: its indexed fields and its document (`case_to_json`, full history).
`late_episodes` counts the episodes resolved after their deadline (breached for good, whatever
the clock says). `alerted_episode` is the clock's bookkeeping (services/deadlines.py): the last
episode whose breach it logged. The projector never writes it, so a replay starts it at 0 again
and the clock's next pass logs nothing new (the alert of an episode always has the same id)."""
UPSERT_CASES_SQL = f"""
INSERT INTO {CASES_TABLE} AS t (customer_id, complaint_id, status, assignee, product_sku, severity,
    category, episode, filed_at, opened_at, due_at, resolved_at, satisfied, late_episodes, doc)
SELECT c, k, s, a, p, sev, cat, ep, f, o, d, r, sat, late, doc::jsonb
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
    %s::int[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[],
    %s::boolean[], %s::int[], %s::text[])
    AS u(c, k, s, a, p, sev, cat, ep, f, o, d, r, sat, late, doc)
ON CONFLICT (customer_id, complaint_id) DO UPDATE SET status = excluded.status,
    assignee = excluded.assignee, product_sku = excluded.product_sku,
    severity = excluded.severity, category = excluded.category, episode = excluded.episode,
    filed_at = excluded.filed_at, opened_at = excluded.opened_at, due_at = excluded.due_at,
    resolved_at = excluded.resolved_at, satisfied = excluded.satisfied,
    late_episodes = excluded.late_episodes, doc = excluded.doc
"""
"""Takes one array per column of `case_rows`."""


def case_rows(
    before: CustomerComplaints | None, after: CustomerComplaints
) -> list[tuple[Any, ...]]:
    """The rows of UPSERT_CASES_SQL for the cases that changed from `before` to `after` (a case
    changes only by being replaced, so an unchanged one is the same object)."""
    old = {} if before is None else before.cases
    return [
        _case_row(case)
        for complaint_id, case in sorted(after.cases.items())
        if old.get(complaint_id) is not case
    ]


def _case_row(case: ComplaintCase) -> tuple[Any, ...]:
    return (
        case.customer_id, case.complaint_id, case.status, case.assignee, case.product_sku,
        case.severity, case.category, case.episode, case.filed_at, case.opened_at, case.due_at,
        case.resolved_at, case.satisfied, late_episodes(case),
        orjson.dumps(case_to_json(case)).decode(),
    )  # fmt: skip


COMPLAINT_CASES: RowTable[CustomerComplaints] = RowTable(
    "complaint_cases", CREATE_CASES_SQL, UPSERT_CASES_SQL, case_rows
)


def case_state(case: ComplaintCase) -> dict[str, Any]:
    """The write-side state of a case (a row of crm_complaint_cases): what the rules need,
    without the history (the complaints read model keeps that)."""
    return case_to_json(replace(case, history=()))
