"""HTTP ingest rules: a request body of one envelope or a list of envelopes becomes Kafka
records for crm.touchpoints, all of them or none; none either when a complaint event is a
transition its case cannot take, or a merge event a merge the rules refuse."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from events.codec import encode
from events.envelope import Envelope, new_event_id, validate_envelope
from events.errors import ErrorCode, InvalidEvent
from infra.case_ledger import ComplaintState
from infra.merge_ledger import MergeState
from projections import merges
from projections.complaints import COMPLAINT_TYPES, case_from_json, check_transitions
from projections.merges import CUSTOMER_MERGED, MergeRejected, check_merges

MAX_EVENTS = 1000


@dataclass(frozen=True, slots=True)
class Record:
    """One validated event as it goes to Kafka: key = customer_id, value = the encoded envelope."""

    event_id: str
    key: bytes
    value: bytes
    envelope: Envelope


class RejectedBatch(Exception):
    """Nothing of the request is accepted. `errors` holds one entry per bad event (with its
    `index` in the request), or a single entry without index when the whole body is at fault."""

    def __init__(self, detail: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors

    @classmethod
    def of_body(cls, code: ErrorCode, message: str) -> RejectedBatch:
        return cls(message, [{"code": code, "field": "", "message": message}])


class ImpossibleTransitions(RejectedBatch):
    """Nothing of the request is accepted: `errors` lists each complaint event its case cannot
    take (`index`, `complaint_id`, the case's `status` then, and the reason)."""


class ImpossibleMerges(RejectedBatch):
    """Nothing of the request is accepted: `errors` lists each merge event the rules refuse
    (`index`, the rule's `code`, `customer_id` and `into_customer_id`, and the reason)."""


def has_merges(records: Sequence[Record]) -> bool:
    return any(r.envelope.type == CUSTOMER_MERGED for r in records)


def merge_customers(records: Sequence[Record]) -> set[str]:
    """The customers the merge events of `records` are about: merged away and merged into."""
    return merges.merge_customers(r.envelope for r in records)


def refuse_impossible_merges(records: Sequence[Record], state: MergeState) -> None:
    """Raise ImpossibleMerges if a merge event of the request breaks a merge rule, given the
    recorded `state` and the request's merges before it, in order. A customer is known by its
    recorded events only, not by one earlier in the request: that travels on its own partition
    and may reach the recorder after the merge. An event whose id is recorded already, or
    earlier in the request, is a resend: not checked."""
    envelopes = [r.envelope for r in records]
    checked = check_merges(envelopes, state.merged_into, state.customers, recorded=state.known)
    if not checked.refused:
        return
    errors = [_merge_error(r.index, r.error) for r in checked.refused]
    first = errors[0]
    detail = (
        f"{len(errors)} of {len(records)} events are impossible merges; nothing was accepted "
        f"(event {first['index']}: {first['code']}: {first['message']})"
    )
    raise ImpossibleMerges(detail, errors)


def _merge_error(index: int, error: MergeRejected) -> dict[str, Any]:
    return {
        "index": index,
        "code": error.code,
        "field": error.field,
        "message": error.message,
        "customer_id": error.customer_id,
        "into_customer_id": error.into_customer_id,
    }


def has_complaints(records: Sequence[Record]) -> bool:
    return any(r.envelope.type in COMPLAINT_TYPES for r in records)


def refuse_impossible_transitions(records: Sequence[Record], state: ComplaintState) -> None:
    """Raise ImpossibleTransitions if a complaint event of the request is a transition its case
    cannot take, given the recorded `state` and the request's events before it, in order. An
    event whose id is recorded already, or earlier in the request, is a resend: not checked."""
    seen = set(state.known)
    fresh: list[int] = []
    for index, record in enumerate(records):
        if record.event_id not in seen:
            seen.add(record.event_id)
            fresh.append(index)
    cases = {key: case_from_json(stored.state) for key, stored in state.cases.items()}
    checked = check_transitions(cases, [records[i].envelope for i in fresh])
    if not checked.refused:
        return
    errors = [
        {
            "index": fresh[r.index],
            **r.error.as_dict(),
            "complaint_id": r.error.complaint_id,
            "status": "unknown" if r.case is None else r.case.status,
        }
        for r in checked.refused
    ]
    first = errors[0]
    detail = (
        f"{len(errors)} of {len(records)} events are impossible complaint transitions; nothing "
        f"was accepted (event {first['index']}: {first['message']})"
    )
    raise ImpossibleTransitions(detail, errors)


def parse_batch(body: bytes, max_event_bytes: int) -> list[Record]:
    """The records of a request body, in request order; raise RejectedBatch listing every
    invalid event (the first error of each) if any is invalid."""
    items = _items(body)
    records: list[Record] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            records.append(_record(item, max_event_bytes))
        except InvalidEvent as error:
            errors.append({"index": index, **error.as_dict()})
    if errors:
        detail = f"{len(errors)} of {len(items)} events are invalid; nothing was accepted"
        raise RejectedBatch(detail, errors)
    return records


def _items(body: bytes) -> list[Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RejectedBatch.of_body(
            "invalid_json", f"request body is not valid UTF-8 JSON: {error}"
        ) from None
    if not isinstance(data, list):
        return [data]
    if not data:
        raise RejectedBatch.of_body("schema_violation", "expected 1 or more events, got none")
    if len(data) > MAX_EVENTS:
        raise RejectedBatch.of_body(
            "size_violation", f"expected at most {MAX_EVENTS} events per request, got {len(data)}"
        )
    return data


def _record(item: Any, max_event_bytes: int) -> Record:
    if isinstance(item, dict) and item.get("event_id") is None:
        item = {**item, "event_id": new_event_id()}
    envelope = validate_envelope(item)
    value = encode(envelope)
    if len(value) > max_event_bytes:
        raise InvalidEvent(
            "size_violation", "", f"event is {len(value)} bytes, the limit is {max_event_bytes}"
        )
    return Record(envelope.event_id, envelope.customer_id.encode(), value, envelope)
