"""The recorder's guards (services/recorder.py): a batch's new complaint events checked against
their recorded cases, and its new customer.merged events against the recorded merges, in order;
what passes becomes the case and merge writes recorded with the events, what does not becomes a
rejection to dead-letter. Also the backfills that fill the case and merge tables from the events
stored before them. The rules are pure (projections.complaints, projections.merges); this module
joins them to Kafka records and to the event store's ledgers (infra/case_ledger.py,
infra/merge_ledger.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby

from kafka.consumer.fetcher import ConsumerRecord

from events.envelope import Envelope
from events.errors import InvalidEvent
from infra.case_ledger import CaseKey, CaseWrite, CaseWrites, ComplaintState
from infra.merge_ledger import MergeRow, MergeState, MergeWrites
from projections.complaint_cases import case_state
from projections.complaints import COMPLAINT_TYPES, SlaPolicy, case_from_json, check_transitions
from projections.merges import CUSTOMER_MERGED, MergeRejected, check_merge, check_merges, merge_of

DEFAULT_SLA = SlaPolicy()


@dataclass(frozen=True, slots=True)
class Rejection:
    """A consumed record to dead-letter, and why."""

    record: ConsumerRecord
    error: InvalidEvent


@dataclass(frozen=True, slots=True)
class ComplaintGuard:
    """A batch's new complaint events checked against their cases: the case writes of the ones
    their case can take, the rejections of the others and their event ids."""

    cases: CaseWrites
    refused: list[Rejection]
    refused_ids: frozenset[str]


def guard_complaints(
    envelopes: Sequence[Envelope],
    sources: Sequence[ConsumerRecord],
    state: ComplaintState,
    policy: SlaPolicy = DEFAULT_SLA,
) -> ComplaintGuard:
    """Check the new complaint events of a batch in order (events within the batch build on
    each other) against the recorded `state`. Only an event the store would record counts: the
    first occurrence of its event id, not recorded yet; a resend is a duplicate, not a
    transition."""
    first: dict[str, int] = {}
    for index, envelope in enumerate(envelopes):
        first.setdefault(envelope.event_id, index)
    fresh = [
        i
        for i, e in enumerate(envelopes)
        if e.type in COMPLAINT_TYPES and first[e.event_id] == i and e.event_id not in state.known
    ]
    cases = {key: case_from_json(stored.state) for key, stored in state.cases.items()}
    checked = check_transitions(cases, [envelopes[i] for i in fresh], policy)
    refused = [
        Rejection(
            sources[fresh[r.index]],
            InvalidEvent("invalid_transition", r.error.field, r.error.message),
        )
        for r in checked.refused
    ]
    writes = [
        CaseWrite(key[0], key[1], _revision(state, key), case_state(case), checked.applied[key])
        for key, case in checked.cases.items()
    ]
    refused_ids = frozenset(envelopes[fresh[r.index]].event_id for r in checked.refused)
    return ComplaintGuard(CaseWrites(COMPLAINT_TYPES, writes), refused, refused_ids)


def backfill_cases(
    envelopes: Iterator[Envelope], policy: SlaPolicy = DEFAULT_SLA
) -> Iterator[CaseWrite]:
    """The case rows of complaint events already stored (by customer, in version order). One
    its case could not take (recorded before the rule existed) changes nothing, as in the
    complaints read model."""
    for _, events in groupby(envelopes, key=lambda e: e.customer_id):
        checked = check_transitions({}, list(events), policy)
        for key, case in checked.cases.items():
            yield CaseWrite(key[0], key[1], 0, case_state(case), checked.applied[key])


@dataclass(frozen=True, slots=True)
class MergeGuard:
    """A batch's new merge events checked against the merges before them: the rows of the
    accepted ones, the rejections of the others and their event ids."""

    merges: MergeWrites
    refused: list[Rejection]
    refused_ids: frozenset[str]


def merge_rejection(record: ConsumerRecord, error: MergeRejected) -> Rejection:
    """The dead letter of a refused merge: the rule's code, and what the rule needed."""
    return Rejection(record, InvalidEvent(error.code, error.field, error.message))


def guard_merges(
    envelopes: Sequence[Envelope], sources: Sequence[ConsumerRecord], state: MergeState
) -> MergeGuard:
    """Check the new merge events of a batch in order, each against the recorded merges and
    those accepted before it in the batch; a customer is known (can be merged into) when it
    has a recorded event or one earlier in the batch that is recorded with it. Only an event
    the store would record counts: the first occurrence of its id, not recorded yet; a resend
    is a duplicate, not a second merge."""
    checked = check_merges(
        envelopes,
        state.merged_into,
        state.customers,
        recorded=state.known,
        earlier_customers_known=True,
    )
    rows = [
        MergeRow(m.customer_id, m.into_customer_id, envelopes[i].event_id)
        for i, m in checked.accepted
    ]
    # the customers of the accepted merges, as the store must find them: not merged away
    unmerged = frozenset(
        c for _, m in checked.accepted for c in (m.customer_id, m.into_customer_id)
    )
    refused = [merge_rejection(sources[r.index], r.error) for r in checked.refused]
    refused_ids = frozenset(envelopes[r.index].event_id for r in checked.refused)
    return MergeGuard(MergeWrites(CUSTOMER_MERGED, rows, unmerged), refused, refused_ids)


def backfill_merges(stored: Iterator[tuple[int, Envelope]]) -> Iterator[MergeRow]:
    """The merge rows of merge events already stored (in position order). One the rules refuse
    (recorded before they existed) merges nothing. Whether the customer merged into existed is
    not checked: the store's events of that time are not at hand."""
    merged_into: dict[str, str] = {}
    for position, envelope in stored:
        try:
            merge = merge_of(envelope.customer_id, envelope.payload)
            check_merge(merge, merged_into)
        except MergeRejected:
            continue
        merged_into[merge.customer_id] = merge.into_customer_id
        yield MergeRow(merge.customer_id, merge.into_customer_id, envelope.event_id, position)


def _revision(state: ComplaintState, key: CaseKey) -> int:
    stored = state.cases.get(key)
    return 0 if stored is None else stored.revision
