"""Complaint cases: a pure state machine per complaint, its SLA and the breach alert, and the fold
of one customer's cases for the read model (its rows of one case each, and the recorder's case
state: projections/complaint_cases.py).

Lifecycle of a case (complaint ids are scoped by customer; the customer's stream orders them):

    complaint.filed     a new complaint_id            -> open, episode 1
    complaint.assigned  an open case, another person  -> open, with that assignee
    complaint.resolved  an open case                  -> resolved
    complaint.reopened  a resolved case               -> open again, the next episode

Anything else raises `InvalidTransition` (code "invalid_transition") saying what the event needed
and what the case was: filing an id that exists, assigning, resolving or reopening an unknown id,
assigning or resolving a resolved case, assigning a case to the person who has it, reopening an
open one. Intake is meant to reject such an event with it (409 over HTTP, crm.deadletter in the
pipeline); the read-model fold (`apply`) keeps one recorded anyway as `rejected`.

SLA: each episode has a deadline, `due_at` = when the episode began + the time its severity allows
(`SlaPolicy`: high 24 h, medium 72 h, low 7 days). **Reopening starts a new episode with the full
time of its severity from the reopening**: the customer came back with the same problem, which now
gets the attention of a new complaint; the old episode keeps its own deadline in the history (and
its breach, if it had one). A case is breached while it is open at or after its deadline; an
episode resolved exactly at its deadline was not breached. One `complaint.sla.breached` alert per
breached episode, raised by the passage of time (`breach_alerts(cases, now)`, injectable clock).

Times are the events' `occurred_at` (business time), so a replay with the same `SlaPolicy` gives
the same cases; `due_at` is fixed when its episode begins (a new policy applies to new episodes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal, NamedTuple

from events.envelope import Envelope
from projections.alerts import COMPLAINT_SLA_BREACHED, Alert, alert_id
from projections.recorded import RecordedEvent, is_next, rfc3339
from projections.views import CustomerView

Severity = Literal["low", "medium", "high"]
Status = Literal["open", "resolved"]
Action = Literal["filed", "assigned", "resolved", "reopened"]

COMPLAINT_TYPES = frozenset(
    {"complaint.filed", "complaint.assigned", "complaint.resolved", "complaint.reopened"}
)
BREACH_ACTION = "Escalate to a team lead and call the customer today: the SLA has passed."


class InvalidTransition(ValueError):
    """An event the case cannot take in its state; `code` is the dead-letter reason."""

    code = "invalid_transition"

    def __init__(self, complaint_id: str, message: str) -> None:
        super().__init__(message)
        self.complaint_id = complaint_id
        self.field = "payload.complaint_id"
        self.message = message

    def as_dict(self) -> dict[str, str]:
        """The shape of `InvalidEvent.as_dict`, so intake reports both alike."""
        return {"code": self.code, "field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class SlaPolicy:
    """How long a complaint may stay open, by severity (settings pass their values in)."""

    high: timedelta = timedelta(hours=24)
    medium: timedelta = timedelta(hours=72)
    low: timedelta = timedelta(days=7)

    def allowed(self, severity: str) -> timedelta:
        if severity not in ("high", "medium", "low"):
            raise ValueError(f"expected a severity low, medium or high, got {severity!r}")
        allowed: timedelta = getattr(self, severity)
        return allowed


@dataclass(frozen=True, slots=True)
class Step:
    """One transition of a case; `details` is JSON-ready (times as RFC 3339 strings)."""

    action: Action
    at: datetime
    event_id: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ComplaintCase:
    """One complaint. `opened_at` and `due_at` belong to the current episode (`episode` 1 is the
    filing, each reopening adds one); `resolved_at`, `resolution` and `satisfied` to the last
    resolution (None while never resolved)."""

    complaint_id: str
    customer_id: str
    category: str
    product_sku: str | None
    severity: Severity
    description: str
    filed_at: datetime
    opened_at: datetime
    due_at: datetime
    status: Status = "open"
    assignee: str | None = None
    episode: int = 1
    resolved_at: datetime | None = None
    resolution: str | None = None
    satisfied: bool | None = None
    history: tuple[Step, ...] = ()

    @property
    def is_open(self) -> bool:
        return self.status == "open"


def transition(
    case: ComplaintCase | None, envelope: Envelope, policy: SlaPolicy = SlaPolicy()
) -> ComplaintCase:
    """The case after `envelope` (a complaint event for this case; None: no case with its id
    yet); InvalidTransition when the case cannot take it."""
    kind = envelope.type
    if kind not in COMPLAINT_TYPES:
        raise ValueError(f"{kind} is not a complaint event")
    complaint_id: str = envelope.payload["complaint_id"]
    wanted = (envelope.customer_id, complaint_id)
    if case is not None and (case.customer_id, case.complaint_id) != wanted:
        raise ValueError(f"event {envelope.event_id} is not about complaint {case.complaint_id}")
    if kind == "complaint.filed":
        if case is not None:
            raise InvalidTransition(
                complaint_id,
                f"complaint.filed needs a new complaint_id; {complaint_id} was filed at "
                f"{rfc3339(case.filed_at)} (reopen it with complaint.reopened instead)",
            )
        return _filed(envelope, policy)
    if case is None:
        raise InvalidTransition(
            complaint_id,
            f"{kind} needs a filed complaint; {complaint_id} is unknown for customer "
            f"{envelope.customer_id} (complaint.filed must come first)",
        )
    return _TRANSITIONS[kind](case, envelope, policy)


def _filed(envelope: Envelope, policy: SlaPolicy) -> ComplaintCase:
    p, at = envelope.payload, envelope.occurred_at
    due_at = at + policy.allowed(p["severity"])
    details = {"severity": p["severity"], "due_at": rfc3339(due_at)}
    step = Step("filed", at, envelope.event_id, details)
    return ComplaintCase(
        complaint_id=p["complaint_id"],
        customer_id=envelope.customer_id,
        category=p["category"],
        product_sku=p.get("product_sku"),
        severity=p["severity"],
        description=p["description"],
        filed_at=at,
        opened_at=at,
        due_at=due_at,
        history=(step,),
    )


def _assigned(case: ComplaintCase, envelope: Envelope, policy: SlaPolicy) -> ComplaintCase:
    assignee: str = envelope.payload["assignee"]
    if not case.is_open:
        raise InvalidTransition(case.complaint_id, _not_open("complaint.assigned", case))
    if assignee == case.assignee:
        raise InvalidTransition(
            case.complaint_id,
            f"complaint.assigned needs another assignee; {case.complaint_id} is already "
            f"assigned to {assignee}",
        )
    details = {"assignee": assignee, "previous": case.assignee}
    return _step(replace(case, assignee=assignee), "assigned", envelope, details)


def _resolved(case: ComplaintCase, envelope: Envelope, policy: SlaPolicy) -> ComplaintCase:
    p = envelope.payload
    if not case.is_open:
        raise InvalidTransition(case.complaint_id, _not_open("complaint.resolved", case))
    resolved = replace(
        case,
        status="resolved",
        resolved_at=envelope.occurred_at,
        resolution=p["resolution"],
        satisfied=p.get("satisfied"),
    )
    details = {"resolution": p["resolution"], "satisfied": p.get("satisfied")}
    return _step(resolved, "resolved", envelope, details)


def _reopened(case: ComplaintCase, envelope: Envelope, policy: SlaPolicy) -> ComplaintCase:
    if case.is_open:
        raise InvalidTransition(
            case.complaint_id,
            f"complaint.reopened needs a resolved complaint; {case.complaint_id} is open "
            f"(episode {case.episode}, due {rfc3339(case.due_at)})",
        )
    at = envelope.occurred_at
    due_at = at + policy.allowed(case.severity)
    reopened = replace(case, status="open", episode=case.episode + 1, opened_at=at, due_at=due_at)
    details = {"reason": envelope.payload["reason"], "due_at": rfc3339(due_at)}
    return _step(reopened, "reopened", envelope, details)


def _not_open(kind: str, case: ComplaintCase) -> str:
    at = "" if case.resolved_at is None else f" at {rfc3339(case.resolved_at)}"
    return (
        f"{kind} needs an open complaint; {case.complaint_id} was resolved{at} "
        "(reopen it with complaint.reopened first)"
    )


def _step(
    case: ComplaintCase, action: Action, envelope: Envelope, details: dict[str, Any]
) -> ComplaintCase:
    step = Step(action, envelope.occurred_at, envelope.event_id, details)
    return replace(case, history=(*case.history, step))


_TRANSITIONS = {
    "complaint.assigned": _assigned,
    "complaint.resolved": _resolved,
    "complaint.reopened": _reopened,
}


# --- intake: a sequence of events checked against the cases before them --------------------

CaseKey = tuple[str, str]
"""(customer_id, complaint_id): complaint ids are scoped by customer."""


def case_key(envelope: Envelope) -> CaseKey:
    """The case a complaint event is about."""
    return envelope.customer_id, envelope.payload["complaint_id"]


class Refusal(NamedTuple):
    """An event its case could not take: its index in the events checked, why, and the case as
    it was then (None: unknown)."""

    index: int
    error: InvalidTransition
    case: ComplaintCase | None


@dataclass(frozen=True, slots=True)
class Checked:
    """What `check_transitions` found: `cases` holds each case an accepted event changed, after
    the last of them, and `applied` the ids of those events in order; `refused` the events their
    case could not take."""

    cases: dict[CaseKey, ComplaintCase]
    applied: dict[CaseKey, tuple[str, ...]]
    refused: list[Refusal]


def check_transitions(
    cases: Mapping[CaseKey, ComplaintCase],
    envelopes: Sequence[Envelope],
    policy: SlaPolicy = SlaPolicy(),
) -> Checked:
    """Take the complaint events of `envelopes` in order, each on the case the ones before it
    left (starting from `cases`, the cases recorded so far); a refused event changes nothing, so
    the events after it see the case without it. Other event types are skipped."""
    changed: dict[CaseKey, ComplaintCase] = {}
    applied: dict[CaseKey, tuple[str, ...]] = {}
    refused: list[Refusal] = []
    for index, envelope in enumerate(envelopes):
        if envelope.type not in COMPLAINT_TYPES:
            continue
        current = envelope.upcast()
        key = case_key(current)
        case = changed[key] if key in changed else cases.get(key)
        try:
            changed[key] = transition(case, current, policy)
        except InvalidTransition as error:
            refused.append(Refusal(index, error, case))
            continue
        applied[key] = (*applied.get(key, ()), envelope.event_id)
    return Checked(changed, applied, refused)


# --- SLA and the breach alert ---------------------------------------------------------------


class Episode(NamedTuple):
    """One open period of a case, from the history."""

    number: int
    opened_at: datetime
    due_at: datetime
    resolved_at: datetime | None


def breached(case: ComplaintCase, now: datetime) -> bool:
    """Whether the case is open at or after the deadline of its current episode."""
    return case.is_open and now >= case.due_at


def episodes(case: ComplaintCase) -> list[Episode]:
    """The case's episodes, oldest first, from its history."""
    found: list[Episode] = []
    for step in case.history:
        if step.action in ("filed", "reopened"):
            due_at = datetime.fromisoformat(step.details["due_at"])
            found.append(Episode(len(found) + 1, step.at, due_at, None))
        elif step.action == "resolved":
            found[-1] = found[-1]._replace(resolved_at=step.at)
    return found


def ever_breached(case: ComplaintCase, now: datetime) -> bool:
    """Whether any episode was (or is) open at its deadline, by `now`."""
    return any(
        now >= e.due_at if e.resolved_at is None else e.resolved_at > e.due_at
        for e in episodes(case)
    )


def late_episodes(case: ComplaintCase) -> int:
    """How many of the case's episodes were resolved after their deadline."""
    return sum(1 for e in episodes(case) if e.resolved_at is not None and e.resolved_at > e.due_at)


def breach_episode_key(case: ComplaintCase) -> str:
    """The alert episode of the current episode's breach; complaint ids may hold "|", episode
    numbers never do."""
    return f"{case.complaint_id}|{case.episode}"


def sla_breached(case: ComplaintCase, now: datetime) -> Alert | None:
    """The `complaint.sla.breached` alert of the case's current episode, if it is breached."""
    if not breached(case, now):
        return None
    details = {
        "complaint_id": case.complaint_id,
        "category": case.category,
        "product_sku": case.product_sku,
        "severity": case.severity,
        "assignee": case.assignee,
        "episode": case.episode,
        "opened_at": rfc3339(case.opened_at),
        "due_at": rfc3339(case.due_at),
    }
    key = breach_episode_key(case)
    return Alert.for_episode(
        COMPLAINT_SLA_BREACHED, case.customer_id, key, now, details, BREACH_ACTION
    )


def breach_alerts(cases: Iterable[ComplaintCase], now: datetime) -> list[Alert]:
    """One alert per case open past its deadline at `now`, earliest deadline first; raising them
    again for the same episodes gives the same alert ids."""
    late = sorted((c for c in cases if breached(c, now)), key=lambda c: (c.due_at, c.complaint_id))
    return [alert for c in late if (alert := sla_breached(c, now)) is not None]


# --- the customer's cases: the read model fold ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    """A recorded complaint event the case could not take (see `apply`)."""

    event_id: str
    type: str
    complaint_id: str
    message: str


@dataclass(frozen=True, slots=True)
class CustomerComplaints:
    """The complaint cases of one customer after `version` (at global `position`)."""

    customer_id: str
    version: int = 0
    position: int = 0
    cases: dict[str, ComplaintCase] = field(default_factory=dict)
    rejected: tuple[Rejected, ...] = ()


def apply(
    state: CustomerComplaints | None, event: RecordedEvent, policy: SlaPolicy = SlaPolicy()
) -> CustomerComplaints:
    """The state after `event`; unchanged if already applied, VersionGap if versions are missing.

    Intake rejects invalid transitions, so the store should hold none; one recorded anyway (before
    the rule existed, or by a path that skipped the check) is kept in `rejected` and changes no
    case, the same way on every replay, instead of stopping the projector for good."""
    envelope = event.envelope
    if state is None:
        state = CustomerComplaints(envelope.customer_id)
    if not is_next(state.customer_id, state.version, event):
        return state
    state = replace(state, version=event.version, position=event.position)
    if envelope.type not in COMPLAINT_TYPES:
        return state
    complaint_id = envelope.payload["complaint_id"]
    try:
        case = transition(state.cases.get(complaint_id), envelope, policy)
    except InvalidTransition as error:
        rejected = Rejected(envelope.event_id, envelope.type, complaint_id, error.message)
        return replace(state, rejected=(*state.rejected, rejected))
    return replace(state, cases=state.cases | {complaint_id: case})


def ended_between(before: CustomerComplaints | None, after: CustomerComplaints) -> list[str]:
    """The ids of the breach alerts whose episode one event ended (a resolution), raised or not."""
    if before is None:
        return []
    return [
        alert_id(COMPLAINT_SLA_BREACHED, after.customer_id, breach_episode_key(case))
        for complaint_id, case in before.cases.items()
        if case.is_open and not after.cases[complaint_id].is_open
    ]


def apply_own(
    state: CustomerComplaints | None, event: RecordedEvent, policy: SlaPolicy = SlaPolicy()
) -> CustomerComplaints:
    """`apply` for a view handed only complaint events (a sparse view): the versions an event
    skips are the customer's other events, which change no case."""
    if state is None:
        state = CustomerComplaints(event.envelope.customer_id)
    if event.version > state.version + 1:
        state = replace(state, version=event.version - 1)
    return apply(state, event, policy)


CASES_TABLE = "rm_complaint_cases"
"""One row per case, for queries across customers (GET /complaints, reports, the clock); its
SQL and rows are projections/complaint_cases.py."""


def complaints_view(policy: SlaPolicy = SlaPolicy()) -> CustomerView[CustomerComplaints]:
    """The read model for the projector, with the SLA of the settings: table rm_complaints (one
    row per customer who ever had a complaint event) and COMPLAINT_CASES (one row per case)."""
    # Imported here: complaint_cases builds its rows from this module's cases.
    from projections.complaint_cases import COMPLAINT_CASES

    return CustomerView(
        "complaints",
        partial(apply_own, policy=policy),
        to_json,
        from_json,
        None,
        ended_between,
        types=COMPLAINT_TYPES,
        tables=(COMPLAINT_CASES,),
    )


# --- JSON -----------------------------------------------------------------------------------


def case_to_json(case: ComplaintCase) -> dict[str, Any]:
    """The stored document of one case, with its full history."""
    return {
        "complaint_id": case.complaint_id,
        "customer_id": case.customer_id,
        "category": case.category,
        "product_sku": case.product_sku,
        "severity": case.severity,
        "description": case.description,
        "status": case.status,
        "assignee": case.assignee,
        "episode": case.episode,
        "filed_at": rfc3339(case.filed_at),
        "opened_at": rfc3339(case.opened_at),
        "due_at": rfc3339(case.due_at),
        "resolved_at": _time_text(case.resolved_at),
        "resolution": case.resolution,
        "satisfied": case.satisfied,
        "history": [
            {"action": s.action, "at": rfc3339(s.at), "event_id": s.event_id, "details": s.details}
            for s in case.history
        ],
    }


def case_from_json(doc: dict[str, Any]) -> ComplaintCase:
    return ComplaintCase(
        complaint_id=doc["complaint_id"],
        customer_id=doc["customer_id"],
        category=doc["category"],
        product_sku=doc["product_sku"],
        severity=doc["severity"],
        description=doc["description"],
        filed_at=datetime.fromisoformat(doc["filed_at"]),
        opened_at=datetime.fromisoformat(doc["opened_at"]),
        due_at=datetime.fromisoformat(doc["due_at"]),
        status=doc["status"],
        assignee=doc["assignee"],
        episode=doc["episode"],
        resolved_at=_time(doc["resolved_at"]),
        resolution=doc["resolution"],
        satisfied=doc["satisfied"],
        history=tuple(
            Step(s["action"], datetime.fromisoformat(s["at"]), s["event_id"], dict(s["details"]))
            for s in doc["history"]
        ),
    )


def case_report(case: ComplaintCase, now: datetime) -> dict[str, Any]:
    """What GET /complaints/{id} shows: the case and whether it is breached at `now`."""
    return case_to_json(case) | {"breached": breached(case, now)}


def open_complaints(cases: Iterable[ComplaintCase], now: datetime) -> list[dict[str, Any]]:
    """The 360's list of open complaints, earliest deadline first."""
    return [
        {
            "complaint_id": c.complaint_id,
            "category": c.category,
            "severity": c.severity,
            "due_at": rfc3339(c.due_at),
            "breached": breached(c, now),
        }
        for c in sorted(cases, key=lambda c: (c.due_at, c.complaint_id))
        if c.is_open
    ]


def to_json(state: CustomerComplaints) -> dict[str, Any]:
    """The read-model document: {"customer_id", "version", "position", "cases": {id: case},
    "rejected": [{"event_id", "type", "complaint_id", "message"}]}."""
    return {
        "customer_id": state.customer_id,
        "version": state.version,
        "position": state.position,
        "cases": {i: case_to_json(c) for i, c in sorted(state.cases.items())},
        "rejected": [asdict(r) for r in state.rejected],
    }


def from_json(doc: dict[str, Any]) -> CustomerComplaints:
    """The state stored by `to_json`, ready to continue folding."""
    return CustomerComplaints(
        customer_id=doc["customer_id"],
        version=doc["version"],
        position=doc["position"],
        cases={i: case_from_json(c) for i, c in doc["cases"].items()},
        rejected=tuple(Rejected(**r) for r in doc["rejected"]),
    )


def _time_text(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)
